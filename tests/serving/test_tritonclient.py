"""Triton's own HTTP client, unchanged, against the server: health, metadata, inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from .conftest import DATATYPE_FEED, Digits, Server, assert_datatypes_answer


def _client(server: Server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")


def test_health_and_metadata(digits_server: Server) -> None:
    client = _client(digits_server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    assert not client.is_model_ready("missing")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata("digits")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert metadata["outputs"][0]["name"] == "logits"


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("request_outputs", [True, False])
def test_infer_equals_in_process_onnxruntime(
    digits_server: Server, digits: Digits, binary: bool, request_outputs: bool
) -> None:
    batch = digits.inputs[:16]
    tensor = triton.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    outputs = [triton.InferRequestedOutput("logits", binary_data=binary)] if request_outputs else None
    result = _client(digits_server).infer("digits", [tensor], outputs=outputs, request_id="abc")
    assert result.get_response()["id"] == "abc"
    np.testing.assert_array_equal(result.as_numpy("logits"), digits.reference(batch))


def test_every_datatype_through_binary_tensors(datatypes_server: Server, datatypes_dir: Path) -> None:
    inputs = []
    for name, (datatype, array) in DATATYPE_FEED.items():
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    result = _client(datatypes_server).infer("datatypes", inputs)
    assert_datatypes_answer(datatypes_dir, result.as_numpy)


def test_errors_reach_the_client_as_messages(digits_server: Server) -> None:
    tensor = triton.InferInput("input", [1, 63], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 63), np.float32))
    with pytest.raises(InferenceServerException) as caught:
        _client(digits_server).infer("digits", [tensor])
    assert "input 'input': shape [1, 63] does not match the model's [-1, 64]" in str(caught.value)
    assert caught.value.status() == "400"

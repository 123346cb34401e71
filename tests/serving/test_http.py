"""The HTTP server as a real process: protocol endpoints, bad input, metrics."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kondense.api.artifacts import MODEL_FILE, sha256_file

from .conftest import Digits, Server


def _infer(server: Server, payload: object) -> httpx.Response:
    return httpx.post(server.infer_url, content=json.dumps(payload), timeout=10)


def _digits_request(batch: np.ndarray, nested: bool = True) -> dict[str, object]:
    data = batch.tolist() if nested else batch.reshape(-1).tolist()
    return {
        "id": "r-7",
        "inputs": [{"name": "input", "shape": list(batch.shape), "datatype": "FP32", "data": data}],
    }


def test_health_and_server_metadata(digits_server: Server) -> None:
    assert httpx.get(f"{digits_server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{digits_server.url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{digits_server.url}/v2").json()["extensions"] == ["binary_tensor_data"]
    for path in ("/v2/models/digits/ready", "/v2/models/digits/versions/1/ready"):
        assert httpx.get(digits_server.url + path).json() == {"name": "digits", "ready": True}


def test_model_metadata_exposes_tensors_and_verified_sha256(digits_server: Server, digits: Digits) -> None:
    metadata = httpx.get(f"{digits_server.url}/v2/models/digits").json()
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    sha = sha256_file(digits.directory / MODEL_FILE)
    assert metadata["parameters"] == {"variant": "stable", "sha256": sha, "verified": True}
    assert (
        f'kondense_model_info{{model="digits",sha256="{sha}",variant="stable"}} 1.0'
        in digits_server.metrics()
    )


@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("path", ["/v2/models/digits/infer", "/v2/models/digits/versions/1/infer"])
def test_infer_equals_in_process_onnxruntime(
    digits_server: Server, digits: Digits, nested: bool, path: str
) -> None:
    batch = digits.inputs[:5]
    response = httpx.post(digits_server.url + path, json=_digits_request(batch, nested))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "r-7" and body["model_name"] == "digits"
    assert response.headers["kondense-variant"] == "stable"  # the track that answered
    (output,) = body["outputs"]
    assert output["name"] == "logits" and output["datatype"] == "FP32" and output["shape"] == [5, 10]
    got = np.array(output["data"], dtype=np.float32).reshape(5, 10)
    np.testing.assert_array_equal(got, digits.reference(batch))


def test_gzip_request_body(digits_server: Server, digits: Digits) -> None:
    raw = json.dumps(_digits_request(digits.inputs[:2])).encode()
    response = httpx.post(
        digits_server.infer_url, content=gzip.compress(raw), headers={"content-encoding": "gzip"}
    )
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(
        np.array(response.json()["outputs"][0]["data"], np.float32).reshape(2, 10),
        digits.reference(digits.inputs[:2]),
    )


def _input(**change: object) -> dict[str, Any]:
    tensor = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.25] * 64}
    return {"inputs": [{**tensor, **change}]}


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        (b'{"inputs": [', 400, "malformed JSON"),
        (_input(shape=[1, 65]), 400, "input 'input': shape [1, 65] does not match the model's [-1, 64]"),
        (_input(datatype="INT64"), 400, "input 'input': datatype INT64 does not match the model's FP32"),
        (_input(data=[0.25] * 63), 400, "input 'input': data has 63 values but shape [1, 64] needs 64"),
        (_input(data=[[0.25] * 64, [0.5]]), 400, "input 'input': data is not a rectangular"),
        (_input(data=["x"] * 64), 400, "input 'input': data must be numbers for FP32, got strings"),
        ({"inputs": []}, 400, "inputs"),
        (
            {
                "inputs": [
                    _input()["inputs"][0],
                    {"name": "extra", "shape": [1], "datatype": "FP32", "data": [1]},
                ]
            },
            400,
            "input 'extra' is not an input of the model",
        ),
        ({"inputs": [{"name": "other", "shape": [1], "datatype": "FP32", "data": [1]}]}, 400, "not an input"),
        ({**_input(), "outputs": [{"name": "probabilities"}]}, 400, "requested output 'probabilities'"),
        (
            b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [NaN'
            + b", 0" * 63
            + b"]}]}",
            400,
            "input 'input': value at flat index 0 is nan",
        ),
        (b"x" * 200_001, 413, "over the limit of 200000 bytes"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_problem(
    digits_server: Server, content: object, status: int, message: str
) -> None:
    body = content if isinstance(content, bytes) else json.dumps(content).encode()
    response = httpx.post(digits_server.infer_url, content=body)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_unknown_model_version_and_route(digits_server: Server) -> None:
    response = httpx.post(f"{digits_server.url}/v2/models/resnet/infer", json=_input())
    assert response.status_code == 404 and "model 'resnet' is not served here" in response.json()["error"]
    response = httpx.get(f"{digits_server.url}/v2/models/digits/versions/7")
    assert response.status_code == 404 and "has no version '7'" in response.json()["error"]
    response = httpx.get(f"{digits_server.url}/v3/whatever")
    assert response.status_code == 404 and "error" in response.json()
    response = httpx.get(f"{digits_server.url}/v2/models/digits/infer")
    assert response.status_code == 405 and "error" in response.json()


def test_gzip_bomb_is_cut_at_the_body_limit(digits_server: Server) -> None:
    bomb = gzip.compress(b" " * 5_000_000)  # 5 MB of JSON whitespace in a few KB
    response = httpx.post(digits_server.infer_url, content=bomb, headers={"content-encoding": "gzip"})
    assert response.status_code == 413 and "decompressed request body" in response.json()["error"]


def _counter(metrics: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    match = re.search(rf"^{name}{{{re.escape(wanted)}}} (\S+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_stable_ignores_the_mirrored_header_so_no_client_hides_from_the_slis(
    digits_server: Server, digits: Digits
) -> None:
    labels = {"model": "digits", "variant": "stable", "protocol": "rest"}
    before = _counter(digits_server.metrics(), "kondense_requests_total", code="400", **labels)
    spoofed = httpx.post(
        digits_server.infer_url,
        content=json.dumps(_input(shape=[2, 64])),
        headers={"kondense-mirrored": "1"},
        timeout=10,
    )
    assert spoofed.status_code == 400
    after = digits_server.metrics()
    assert _counter(after, "kondense_requests_total", code="400", **labels) - before == 1
    assert (
        _counter(after, "kondense_mirrored_requests_total", code="400", model="digits", variant="stable") == 0
    )


def test_metrics_count_requests_by_code_and_time_them(digits_server: Server, digits: Digits) -> None:
    before = digits_server.metrics()
    for _ in range(3):
        assert _infer(digits_server, _digits_request(digits.inputs[:1])).status_code == 200
    assert _infer(digits_server, _input(shape=[2, 64])).status_code == 400
    after = digits_server.metrics()
    labels = {"model": "digits", "variant": "stable", "protocol": "rest"}
    ok = _counter(after, "kondense_requests_total", code="200", **labels) - _counter(
        before, "kondense_requests_total", code="200", **labels
    )
    bad = _counter(after, "kondense_requests_total", code="400", **labels) - _counter(
        before, "kondense_requests_total", code="400", **labels
    )
    assert (ok, bad) == (3, 1)
    count = _counter(after, "kondense_request_duration_seconds_count", **labels) - _counter(
        before, "kondense_request_duration_seconds_count", **labels
    )
    assert count == 4
    # sub-millisecond buckets exist so histogram_quantile can resolve fast answers
    assert (
        'kondense_request_duration_seconds_bucket{le="0.0001",model="digits",protocol="rest",variant="stable"}'
        in after
    )


# Fuzzing over HTTP: start from a valid request and break one thing at a time.
def _mutations() -> st.SearchStrategy[object]:
    scalar = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=3)
    data = st.lists(scalar, max_size=70) | st.lists(st.lists(scalar, max_size=65), max_size=3) | scalar
    field = st.sampled_from(["name", "shape", "datatype", "data", "parameters", "extra"])
    value = (
        scalar
        | data
        | st.lists(st.integers(-2, 70), max_size=3)
        | st.dictionaries(st.text(max_size=3), scalar)
    )
    return st.tuples(field, value)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(_mutations(), min_size=1, max_size=3), batch=st.integers(1, 3))
def test_fuzzed_requests_never_get_a_5xx(
    digits_server: Server, mutations: list[tuple[str, object]], batch: int
) -> None:
    tensor: dict[str, object] = {
        "name": "input",
        "shape": [batch, 64],
        "datatype": "FP32",
        "data": [0.5] * 64 * batch,
    }
    for field, value in mutations:
        tensor[field] = value
    response = httpx.post(digits_server.infer_url, content=json.dumps({"inputs": [tensor]}), timeout=10)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["error"]


def test_datatypes_round_trip_through_json(datatypes_server: Server, datatypes_dir: Path) -> None:
    feed: dict[str, np.ndarray] = {
        "x": np.array([[1.5, -2, 0, 4]], np.float32),
        "ids": np.array([[1, -5, 2**40]], np.int64),
        "flag": np.array([[True, False]]),
        "half": np.array([[0.5, -3]], np.float16),
        "pixels": np.array([[3, 250]], np.uint8),
        "text": np.array(["MiXeD Case"], dtype=object),
    }
    inputs = []
    for name, array in feed.items():
        data = array.tolist()
        datatype = {
            "x": "FP32",
            "ids": "INT64",
            "flag": "BOOL",
            "half": "FP16",
            "pixels": "UINT8",
            "text": "BYTES",
        }
        inputs.append({"name": name, "shape": list(array.shape), "datatype": datatype[name], "data": data})
    response = httpx.post(datatypes_server.infer_url, json={"inputs": inputs})
    assert response.status_code == 200, response.text
    session = ort.InferenceSession(str(datatypes_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))
    for output in response.json()["outputs"]:
        want = expected[output["name"]]
        assert output["shape"] == list(want.shape)
        np.testing.assert_array_equal(np.array(output["data"], dtype=want.dtype).reshape(want.shape), want)
    # BOOL data must be booleans, not numbers
    inputs[2] = {**inputs[2], "data": [[1, 0]]}
    response = httpx.post(datatypes_server.infer_url, json={"inputs": inputs})
    assert (
        response.status_code == 400
        and "input 'flag': data must be booleans for BOOL" in response.json()["error"]
    )

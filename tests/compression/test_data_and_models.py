"""Bad data and bad models get clear errors that name the file, the array and the problem."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from kondense.compression.data import load_for_model, load_npz
from kondense.compression.errors import BadInputError
from kondense.compression.model_files import load_model, open_session, signature_of


def test_signature_of_digits(digits):
    signature = signature_of(load_model(digits.model))
    (spec,) = signature.inputs
    assert spec.name == "input" and spec.dtype == np.float32 and spec.shape == (None, 1, 8, 8)
    assert signature.dynamic_batch


def test_missing_input_name_is_named(digits, tmp_path):
    path = tmp_path / "wrong.npz"
    np.savez(path, pixels=np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(BadInputError, match=r"missing model input\(s\) \['input'\].*\['pixels'\]") as info:
        load_for_model(path, signature_of(load_model(digits.model)))
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 1, 8, 8), np.float64), r"\[input\]: dtype float64, the model input expects float32"),
        (np.zeros((4, 1, 7, 8), np.float32), r"\[input\]: axis 2 is 7, model input expects 8"),
        (np.zeros((4, 64), np.float32), r"\[input\]: shape \[4, 64\] has rank 2"),
        (np.full((4, 1, 8, 8), np.nan, np.float32), r"\[input\]: contains NaN"),
    ],
)
def test_wrong_dtype_shape_or_values(digits, tmp_path, array, message):
    path = tmp_path / "bad.npz"
    np.savez(path, input=array)
    with pytest.raises(BadInputError, match=message):
        load_for_model(path, signature_of(load_model(digits.model)))


def test_unreadable_npz_files(tmp_path):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(BadInputError, match=r"not a readable \.npz"):
        load_npz(corrupt)
    with pytest.raises(BadInputError, match="does not exist"):
        load_npz(tmp_path / "absent.npz")
    pickled = tmp_path / "objects.npz"
    np.savez(pickled, input=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(BadInputError, match="object arrays, which need pickle; refused"):
        load_npz(pickled)
    uneven = tmp_path / "uneven.npz"
    np.savez(uneven, input=np.zeros((4, 2), np.float32), labels=np.zeros(3, np.int64))
    with pytest.raises(BadInputError, match="share the sample count"):
        load_npz(uneven)


def test_corrupt_and_invalid_models(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(BadInputError, match=f"{garbage}: "):
        load_model(garbage)
    # a structurally valid protobuf whose graph references an undefined tensor
    node = helper.make_node("Relu", ["nowhere"], ["y"])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    invalid = tmp_path / "invalid.onnx"
    onnx.save(helper.make_model(graph), invalid)
    with pytest.raises(BadInputError, match="invalid ONNX model"):
        load_model(invalid)


def test_ort_refusal_is_a_bad_input(tmp_path):
    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    path = tmp_path / "custom.onnx"
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
        ir_version=10,
    )
    onnx.save(model, path)
    with pytest.raises(BadInputError, match=r"ONNX Runtime cannot load the model.*NoSuchOp"):
        open_session(path)

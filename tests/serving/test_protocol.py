"""Open Inference Protocol decoding/encoding, in process: named bad inputs and fuzzing."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kondense.serving import protocol
from kondense.serving.protocol import (
    DecodedRequest,
    ProtocolError,
    decode_request,
    decode_response,
    encode_response,
)
from kondense.serving.tensors import TensorSpec

INPUTS = (
    TensorSpec("x", "FP32", (-1, 4)),
    TensorSpec("ids", "INT8", (-1, 2)),
    TensorSpec("text", "BYTES", (-1,)),
)
OUTPUTS = (TensorSpec("y", "FP32", (-1, 4)),)


def _request(**overrides: Any) -> dict[str, Any]:
    inputs = {
        "x": {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [[1, 2, 3, 4], [5, 6, 7, 8.5]]},
        "ids": {"name": "ids", "shape": [2, 2], "datatype": "INT8", "data": [1, -2, 3, 127]},
        "text": {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", "Bé"]},
    }
    for name, change in overrides.items():
        if change is None:
            del inputs[name]
        else:
            inputs[name] = {**inputs[name], **change}
    return {"id": "req-1", "inputs": list(inputs.values())}


def _decode(payload: object, allow_non_finite: bool = False) -> DecodedRequest:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return decode_request(body, None, INPUTS, OUTPUTS, allow_non_finite=allow_non_finite)


def test_nested_and_flat_data_decode_to_the_same_arrays() -> None:
    decoded = _decode(_request())
    assert decoded.id == "req-1"
    np.testing.assert_array_equal(decoded.inputs["x"], np.array([[1, 2, 3, 4], [5, 6, 7, 8.5]], np.float32))
    assert decoded.inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(decoded.inputs["ids"], np.array([[1, -2], [3, 127]], np.int8))
    assert list(decoded.inputs["text"]) == ["a", "Bé"]
    assert decoded.outputs is None


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"{not json", "malformed JSON"),
        (b"[]", "invalid inference request"),
        ({"inputs": []}, "inputs"),
        (_request(x={"shape": [2, -4]}), "inputs[0].shape[1]"),
        (_request(x={"datatype": "FP64"}), "input 'x': datatype FP64 does not match the model's FP32"),
        (_request(x={"datatype": "FLOAT"}), "input 'x': unknown datatype 'FLOAT'"),
        (_request(x={"shape": [2, 5]}), "input 'x': shape [2, 5] does not match the model's [-1, 4]"),
        (_request(x={"shape": [1, 4]}), "input 'x': data has 8 values but shape [1, 4] needs 4"),
        (_request(x={"data": [[1, 2, 3, 4], [5, 6, 7]]}), "input 'x': data is not a rectangular"),
        (
            _request(x={"data": [1, 2, 3, 4, 5, 6, 7, "8"]}),
            "input 'x': data must be numbers for FP32, got strings",
        ),
        (_request(x={"data": [1, 2, 3, 4, 5, 6, 7, None]}), "input 'x': data must be numbers"),
        (_request(ids={"data": [1, 2, 3, 4.5]}), "input 'ids': data must be integers for INT8"),
        (_request(ids={"data": [1, 2, 3, 128]}), "input 'ids': value 128 is out of range for INT8"),
        (_request(text={"data": ["a", 3]}), "input 'text': BYTES value at flat index 1 is not a string"),
        (_request(x={"data": None}), "input 'x': has no 'data'"),
        (_request(x=None), "missing input 'x'"),
        (
            {"inputs": [*_request()["inputs"], {"name": "z", "shape": [1], "datatype": "FP32", "data": [1]}]},
            "input 'z' is not an input of the model",
        ),
        ({"inputs": [*_request()["inputs"], _request()["inputs"][0]]}, "input 'x' is given more than once"),
        (
            {**_request(), "outputs": [{"name": "nope"}]},
            "requested output 'nope' is not an output of the model",
        ),
        ({**_request(), "id": 5}, "id"),
        (_request(x={"dtype": "FP32"}), "inputs[0].dtype: Extra inputs are not permitted"),
    ],
)
def test_bad_requests_name_the_problem(payload: object, expected: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        _decode(payload)
    assert expected in str(caught.value)


def test_nan_and_infinity_are_rejected_unless_allowed() -> None:
    body = orjson.dumps(_request()).replace(b"8.5", b"NaN")
    with pytest.raises(ProtocolError, match=r"input 'x': value at flat index 7 is nan"):
        _decode(body)
    assert np.isnan(_decode(body, allow_non_finite=True).inputs["x"][1, 3])
    too_big = orjson.dumps(_request()).replace(b"8.5", b"1e300")
    with pytest.raises(ProtocolError, match=r"input 'x': value at flat index 7 is inf as FP32"):
        _decode(too_big)


def test_binary_tensor_data_extension() -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    ids = np.array([[1, 2], [3, 4]], dtype=np.int8)
    text = b"".join(struct.pack("<I", len(s)) + s for s in (b"hello", b""))
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                },
                {"name": "ids", "shape": [2, 2], "datatype": "INT8", "data": ids.tolist()},
                {
                    "name": "text",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(text)},
                },
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    )
    body = header + x.tobytes() + text
    decoded = decode_request(body, len(header), INPUTS, OUTPUTS)
    np.testing.assert_array_equal(decoded.inputs["x"], x)
    assert list(decoded.inputs["text"]) == [b"hello", b""]
    assert decoded.outputs == ["y"] and decoded.binary_outputs == {"y"}
    with pytest.raises(ProtocolError, match="input 'x': binary_data_size 32 runs past the end"):
        decode_request(header + x.tobytes()[:20], len(header), INPUTS, OUTPUTS)
    with pytest.raises(ProtocolError, match="3 bytes of binary data are not claimed"):
        decode_request(body + b"abc", len(header), INPUTS, OUTPUTS)


@pytest.mark.parametrize("binary", [False, True])
def test_responses_round_trip(binary: bool) -> None:
    outputs: dict[str, np.ndarray] = {
        "y": np.array([[0.5, -1.0]], dtype=np.float32),
        "half": np.array([1.5], dtype=np.float16),
        "flags": np.array([True, False]),
        "text": np.array(["ok", "é"], dtype=object),
    }
    body, header_length = encode_response(
        "m", "1", "abc", outputs, frozenset(outputs) if binary else frozenset()
    )
    assert (header_length is not None) == binary
    assert orjson.loads(body[:header_length] if binary else body)["id"] == "abc"
    decoded = decode_response(body, header_length)
    for name, array in outputs.items():
        np.testing.assert_array_equal(
            decoded[name], array if name != "text" or not binary else [b"ok", "é".encode()]
        )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=12,
)
tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["x", "ids", "text", "other"]),
        "shape": st.lists(st.integers(-1, 5), max_size=3),
    },
    optional={
        "datatype": st.sampled_from(["FP32", "INT8", "BYTES", "BOOL", "FP16", "bogus"]),
        "data": json_values,
        "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "x"]), json_values, max_size=2),
    },
)
requests = st.fixed_dictionaries(
    {"inputs": st.lists(tensor, max_size=4)},
    optional={"id": json_values, "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=3)}))},
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=requests | json_values, tail=st.binary(max_size=16), header_cut=st.none() | st.integers(0, 64))
def test_fuzzed_requests_either_decode_or_raise_protocol_error(
    payload: object, tail: bytes, header_cut: int | None
) -> None:
    body = json.dumps(payload).encode() + tail  # stdlib json: big integers, NaN and Infinity too
    header_length = None if header_cut is None else min(max(header_cut, 1), len(body))
    try:
        decoded = decode_request(body, header_length, INPUTS, OUTPUTS)
    except ProtocolError as exc:
        assert str(exc)
    else:  # anything accepted must fit the model exactly
        for spec in INPUTS:
            array = decoded.inputs[spec.name]
            assert array.dtype == spec.dtype and spec.accepts_shape(array.shape)


def _outcome(body: bytes) -> tuple[str, object]:
    try:
        decoded = decode_request(body, None, INPUTS, OUTPUTS)
    except ProtocolError as exc:
        return "refused", str(exc)
    arrays = {name: (array.dtype.str, array.shape, array.tolist()) for name, array in decoded.inputs.items()}
    return "decoded", (decoded.id, arrays, decoded.outputs, sorted(decoded.binary_outputs))


well_formed_requests = st.fixed_dictionaries(
    {"inputs": st.lists(tensor, min_size=1, max_size=4)},
    optional={
        "id": st.none() | st.text(max_size=3) | st.integers(),
        "parameters": st.none() | st.dictionaries(st.sampled_from(["binary_data_output", "y"]), json_values),
        "outputs": st.none()
        | st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["y", "z"])},
                optional={"parameters": st.dictionaries(st.sampled_from(["binary_data", "x"]), json_values)},
            ),
            max_size=2,
        ),
        "extra": json_values,
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=well_formed_requests | requests | json_values)
def test_the_orjson_fast_path_decides_as_the_pydantic_model(payload: object) -> None:
    """A request the fast path reads (orjson, Python type checks) decodes to exactly what the pydantic
    model makes of it, and is refused with exactly the same message."""
    body = json.dumps(payload).encode()  # stdlib json: big integers, NaN and Infinity too
    fast = _outcome(body)
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(protocol, "_well_formed", lambda _parsed: False)
        assert _outcome(body) == fast


def test_the_fast_path_takes_a_well_formed_request() -> None:
    assert protocol._well_formed(_request())
    assert protocol._well_formed(
        {**_request(), "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
    )
    bad: dict[str, Any]
    for bad in (
        {"inputs": []},
        _request(x={"shape": [2, True]}),
        _request(x={"shape": [2, 4.0]}),
        _request(x={"dtype": "FP32"}),
        {**_request(), "id": 5},
        {**_request(), "outputs": [{"name": "y", "extra": 1}]},
    ):
        assert not protocol._well_formed(bad)

"""Request validation shared by every protocol front end: limits are checked from the shapes alone."""

from __future__ import annotations

import pytest

from kondense.serving.tensors import TensorSpec
from kondense.serving.validation import RequestError, RequestLimits, TensorHeader, check_inputs, check_outputs

SPECS = (TensorSpec("x", "FP32", (-1, -1)), TensorSpec("ids", "INT64", (-1,)))
LIMITS = RequestLimits(max_elements=1000)


def test_counts_per_input_within_the_limit() -> None:
    headers = [TensorHeader("x", "FP32", [10, 50]), TensorHeader("ids", "INT64", [10])]
    assert check_inputs(headers, SPECS, LIMITS) == {"x": 500, "ids": 10}


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ([TensorHeader("x", "FP32", [10**30, 0]), TensorHeader("ids", "INT64", [0])],
         "input 'x': dimension 0 of shape [1000000000000000000000000000000, 0] is over the limit of 1000"),
        ([TensorHeader("x", "FP32", [20, 50]), TensorHeader("ids", "INT64", [1])],
         "the inputs hold 1001 elements (x: 1000, ids: 1), over the limit of 1000 per request"),
        ([TensorHeader("x", "FP32", [1, 1])], "missing input 'ids'"),
        ([TensorHeader("x", "FP32", [1, 1]), TensorHeader("x", "FP32", [1, 1])], "input 'x' is given more than once"),
        ([TensorHeader("x", "FP16", [1, 1]), TensorHeader("ids", "INT64", [1])],
         "input 'x': datatype FP16 does not match the model's FP32"),
        ([TensorHeader("x", "BF16", [1, 1]), TensorHeader("ids", "INT64", [1])], "unknown datatype 'BF16'"),
        ([TensorHeader("x", "FP32", [1]), TensorHeader("ids", "INT64", [1])], "shape [1] does not match"),
    ],
)  # fmt: skip
def test_problems_name_the_input_and_the_limit(headers: list[TensorHeader], message: str) -> None:
    with pytest.raises(RequestError) as caught:
        check_inputs(headers, SPECS, LIMITS)
    assert message in str(caught.value)


def test_outputs_must_be_known_and_unique() -> None:
    outputs = (TensorSpec("y", "FP32", (-1,)),)
    check_outputs(["y"], outputs)
    with pytest.raises(RequestError, match="requested output 'z' is not an output"):
        check_outputs(["z"], outputs)
    with pytest.raises(RequestError, match="output 'y' is requested more than once"):
        check_outputs(["y", "y"], outputs)

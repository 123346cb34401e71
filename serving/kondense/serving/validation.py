"""Request validation shared by every protocol front end (REST and gRPC).

Checks what a client sends against the model's ``TensorSpec`` s and the server's ``RequestLimits``
*before* anything is allocated for the data: names, datatypes, shapes, then the element budget, and
after decoding the values (finite floats). Every problem is a ``RequestError`` whose message names the
tensor and what is wrong (answered as a client error, never a 500). Knows numpy, not HTTP or gRPC.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from kondense.serving.tensors import DATATYPES, TensorSpec


class RequestError(ValueError):
    """The request does not fit the model or the server's limits (a client error)."""


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_elements: int = 16 * 1024 * 1024
    """Tensor elements per request, summed over its inputs (--max-elements)."""

    def __post_init__(self) -> None:
        if self.max_elements < 1:
            raise ValueError("max_elements must be at least 1")


@dataclass(frozen=True, slots=True)
class TensorHeader:
    """What a request says about one input before its data is read."""

    name: str
    datatype: str
    shape: Sequence[int]


def names(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"'{spec.name}' ({spec.datatype} {list(spec.shape)})" for spec in specs)


def _quoted(items: Iterable[str]) -> str:
    return ", ".join(f"'{name}'" for name in items)


def check_inputs(
    headers: Sequence[TensorHeader], specs: Sequence[TensorSpec], limits: RequestLimits
) -> dict[str, int]:
    """Check every input's name, datatype and shape and the request's element budget; returns the
    element count per input. Nothing of the data has been decoded yet when this runs."""
    by_name = {spec.name: spec for spec in specs}
    seen: set[str] = set()
    for header in headers:
        if header.name in seen:
            raise RequestError(f"input '{header.name}' is given more than once")
        seen.add(header.name)
        if header.name not in by_name:
            raise RequestError(
                f"input '{header.name}' is not an input of the model; inputs are: {names(specs)}"
            )
    if missing := [name for name in by_name if name not in seen]:
        raise RequestError(f"missing input {_quoted(missing)}; the model needs: {names(specs)}")

    counts: dict[str, int] = {}
    max_elements = limits.max_elements
    for header in headers:
        spec = by_name[header.name]
        if header.datatype != spec.datatype:
            where = f"input '{header.name}'"
            if header.datatype not in DATATYPES:
                raise RequestError(
                    f"{where}: unknown datatype {header.datatype!r}; known: {', '.join(DATATYPES)}"
                )
            raise RequestError(
                f"{where}: datatype {header.datatype} does not match the model's {spec.datatype}"
            )
        shape = list(header.shape)
        if (shape and (min(shape) < 0 or max(shape) > max_elements)) or not spec.accepts_shape(shape):
            raise RequestError(_shape_problem(header.name, shape, spec, max_elements))
        counts[header.name] = math.prod(shape)
    total = sum(counts.values())
    if total > limits.max_elements:
        raise RequestError(
            f"the inputs hold {total} elements ({', '.join(f'{n}: {c}' for n, c in counts.items())}), over the "
            f"limit of {limits.max_elements} per request (--max-elements); split the batch"
        )
    return counts


def _shape_problem(name: str, shape: list[int], spec: TensorSpec, max_elements: int) -> str:
    """What is wrong with a shape ``check_inputs`` found wrong: a negative dimension, one that does
    not match the model's, or else one over the element limit (in that order)."""
    where = f"input '{name}'"
    if any(size < 0 for size in shape):
        return f"{where}: shape {shape} has a negative dimension"
    if not spec.accepts_shape(shape):
        return f"{where}: shape {shape} does not match the model's {list(spec.shape)} (-1 means any size)"
    axis = next(axis for axis, size in enumerate(shape) if size > max_elements)
    return (
        f"{where}: dimension {axis} of shape {shape} is over the limit of "
        f"{max_elements} elements per request (--max-elements)"
    )


def check_finite(array: np.ndarray, datatype: str, where: str) -> None:
    """Float inputs must be finite unless the server allows otherwise."""
    if array.dtype.kind != "f":
        return
    finite = np.isfinite(array)
    if not np.logical_and.reduce(finite, axis=None):  # ``finite.all()`` without its Python wrapper
        index = int(np.argmin(finite.reshape(-1)))
        raise RequestError(
            f"{where}: value at flat index {index} is {array.reshape(-1)[index]} as {datatype}; "
            "the model takes finite numbers only"
        )


def check_outputs(requested: Sequence[str], specs: Sequence[TensorSpec]) -> None:
    known = {spec.name for spec in specs}
    seen: set[str] = set()
    for name in requested:
        if name not in known:
            raise RequestError(
                f"requested output '{name}' is not an output of the model; outputs are: {names(specs)}"
            )
        if name in seen:
            raise RequestError(f"output '{name}' is requested more than once")
        seen.add(name)

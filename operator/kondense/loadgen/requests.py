"""Turn .npz rows into Open Inference Protocol v2 JSON bodies (pure)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import numpy as np

V2_DATATYPES = {
    np.dtype("float32"): "FP32",
    np.dtype("float64"): "FP64",
    np.dtype("float16"): "FP16",
    np.dtype("int64"): "INT64",
    np.dtype("int32"): "INT32",
    np.dtype("int16"): "INT16",
    np.dtype("int8"): "INT8",
    np.dtype("uint8"): "UINT8",
    np.dtype("bool"): "BOOL",
}
LABELS = "labels"
T = TypeVar("T")


class DataError(ValueError):
    pass


def request_bodies(arrays: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """One request per row (batch 1), every model input named as in the file; labels are left out."""
    inputs = {k: v for k, v in arrays.items() if k != LABELS}
    if not inputs:
        raise DataError("no input arrays (only labels)")
    rows = {len(v) for v in inputs.values()}
    if len(rows) != 1:
        raise DataError(
            f"input arrays disagree on the number of rows: { {k: len(v) for k, v in inputs.items()} }"
        )
    bodies = []
    for i in range(rows.pop()):
        tensors = []
        for name, array in inputs.items():
            if array.dtype not in V2_DATATYPES:
                raise DataError(f"{name}: dtype {array.dtype} has no v2 datatype")
            row = array[i : i + 1]
            tensors.append(
                {"name": name, "shape": list(row.shape), "datatype": V2_DATATYPES[array.dtype],
                 "data": row.reshape(-1).tolist()}
            )  # fmt: skip
        bodies.append({"id": f"load-{i}", "inputs": tensors})
    return bodies


def cycle(items: list[T]) -> Iterator[T]:
    while True:
        yield from items

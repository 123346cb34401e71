"""Data sets (``.npz`` files whose arrays are named after the model inputs, plus optional ``labels``)
and their validation against a model's input signature.

Arrays are read with ``allow_pickle=False``: object arrays in a user file are an error, never code.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kondense.compression.errors import BadInputError
from kondense.compression.model_files import ModelSignature

LABELS = "labels"


@dataclass(frozen=True)
class Dataset:
    """Samples along axis 0 of every array; ``source`` names the file in error messages."""

    source: str
    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, count: int) -> Dataset:
        labels = None if self.labels is None else self.labels[:count]
        return Dataset(self.source, {k: v[:count] for k, v in self.inputs.items()}, labels)

    def sample(self, index: int) -> dict[str, np.ndarray]:
        """One sample as a batch of one."""
        return {name: array[index : index + 1] for name, array in self.inputs.items()}

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), size):
            yield {name: array[start : start + size] for name, array in self.inputs.items()}


def load_npz(path: str | Path) -> Dataset:
    """Read an ``.npz`` data set; every array must have the same number of samples."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(str(path), "data file does not exist")
    if not zipfile.is_zipfile(path):
        raise BadInputError(str(path), "not a readable .npz file (not a zip archive of .npy arrays)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise BadInputError(str(path), f"holds object arrays, which need pickle; refused ({exc})") from exc
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise BadInputError(str(path), f"not a readable .npz file ({exc})") from exc
    labels = arrays.pop(LABELS, None)
    if not arrays:
        raise BadInputError(str(path), "contains no input arrays (only 'labels' or nothing)")
    counts = {name: (array.shape[0] if array.ndim else None) for name, array in arrays.items()}
    if labels is not None:
        counts[LABELS] = labels.shape[0] if labels.ndim else None
    if None in counts.values() or len(set(counts.values())) != 1:
        raise BadInputError(str(path), f"arrays must share the sample count on axis 0, got {counts}")
    if next(iter(counts.values())) == 0:
        raise BadInputError(str(path), "contains zero samples")
    return Dataset(str(path), arrays, labels)


def validate_for_model(dataset: Dataset, signature: ModelSignature) -> Dataset:
    """Check names, dtypes and shapes against the model inputs; keep only the model's inputs.

    Axis 0 of each array is the sample axis and maps onto the model's batch axis.
    """
    missing = [spec.name for spec in signature.inputs if spec.name not in dataset.inputs]
    if missing:
        raise BadInputError(
            dataset.source,
            f"missing model input(s) {missing}; the file has {sorted(dataset.inputs)}"
            f"{' and labels' if dataset.labels is not None else ''}",
        )
    for spec in signature.inputs:
        array = dataset.inputs[spec.name]
        where = f"{dataset.source}[{spec.name}]"
        if array.dtype != spec.dtype:
            raise BadInputError(where, f"dtype {array.dtype}, the model input expects {spec.dtype}")
        if array.ndim != len(spec.shape):
            raise BadInputError(
                where,
                f"shape {list(array.shape)} has rank {array.ndim}, model input expects {spec.shape_text}",
            )
        for axis, (got, want) in enumerate(zip(array.shape[1:], spec.shape[1:], strict=True), start=1):
            if want is not None and got != want:
                raise BadInputError(
                    where, f"axis {axis} is {got}, model input expects {want} (shape {spec.shape_text})"
                )
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise BadInputError(where, "contains NaN or infinite values")
    return Dataset(
        dataset.source, {spec.name: dataset.inputs[spec.name] for spec in signature.inputs}, dataset.labels
    )


def load_for_model(path: str | Path, signature: ModelSignature) -> Dataset:
    return validate_for_model(load_npz(path), signature)

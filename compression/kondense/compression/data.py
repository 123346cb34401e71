"""Data sets (``.npz`` files whose arrays are named after the model inputs, plus optional ``labels``)
and their validation against a model's input signature.

Layout of a data file:

* ``<input name>``: one array per model input; axis 0 is the sample axis and maps onto the model's
  batch axis, so the array has the model input's rank (``[N, ...]``).
* ``fixed:<input name>``: an input that does not follow the samples — recurrent state such as
  ``[1, 1, 128]``, a scalar such as a threshold or a sampling temperature. It is fed exactly as
  stored (the model input's full shape, no sample axis) with every sample. Models with fixed inputs
  are run one sample at a time, since a fixed input cannot follow a batch.
* ``labels`` (optional): ``[N]`` class indices, or ``[N, T]`` per timestep for ``[N, T, C]``
  outputs (negative labels mark padding and are ignored).

A model whose inputs fix the batch at B > 1 (e.g. ``[2, 3, 8, 8]``, as some exporters write) is fed
B consecutive samples per run: N must then be a multiple of B (``Dataset.group``).

Arrays are read with ``allow_pickle=False``: object arrays in a user file are an error, never code.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kondense.compression.errors import BadInputError
from kondense.compression.model_files import ModelSignature, TensorSpec

LABELS = "labels"
FIXED_PREFIX = "fixed:"


@dataclass(frozen=True)
class Dataset:
    """Samples along axis 0 of every array of ``inputs``; ``fixed`` inputs go with every sample as
    stored. ``source`` names the file in error messages."""

    source: str
    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray | None = None
    fixed: Mapping[str, np.ndarray] = field(default_factory=dict)
    group: int = 1  # samples per run when the model fixes its batch at more than 1

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def batchable(self) -> bool:
        """Whether samples may be stacked into batches (not with fixed inputs such as RNN state)."""
        return not self.fixed

    def take(self, count: int) -> Dataset:
        """The first ``count`` samples, rounded up to whole groups."""
        count = -(-count // self.group) * self.group
        labels = None if self.labels is None else self.labels[:count]
        inputs = {k: v[:count] for k, v in self.inputs.items()}
        return Dataset(self.source, inputs, labels, self.fixed, self.group)

    def sample(self, index: int) -> dict[str, np.ndarray]:
        """One sample as a batch of one (fixed inputs as stored); for a model with a fixed batch of
        ``group`` > 1, the group of samples holding ``index``."""
        start = index - index % self.group
        rows = slice(start, start + self.group)
        return {**{name: array[rows] for name, array in self.inputs.items()}, **self.fixed}

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of ``size`` samples (one at a time when the data set has fixed inputs), in whole
        groups when the model fixes its batch."""
        size = size if self.batchable else 1
        size = max(self.group, size - size % self.group)
        for start in range(0, len(self), size):
            yield {**{name: array[start : start + size] for name, array in self.inputs.items()}, **self.fixed}


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
    fixed = {
        name[len(FIXED_PREFIX) :]: arrays.pop(name) for name in list(arrays) if name.startswith(FIXED_PREFIX)
    }
    if not arrays:
        raise BadInputError(
            str(path), "contains no per-sample input arrays (only 'labels', 'fixed:' inputs or nothing)"
        )
    both = sorted(set(fixed) & set(arrays))
    if both:
        raise BadInputError(str(path), f"input(s) {both} given both per sample and as 'fixed:'; give one")
    counts = {name: (array.shape[0] if array.ndim else None) for name, array in arrays.items()}
    if labels is not None:
        counts[LABELS] = labels.shape[0] if labels.ndim else None
    if None in counts.values() or len(set(counts.values())) != 1:
        raise BadInputError(
            str(path),
            f"arrays must share the sample count on axis 0, got {counts}; store inputs that do not follow "
            f"the samples (recurrent state, scalars) as '{FIXED_PREFIX}<input name>'",
        )
    if next(iter(counts.values())) == 0:
        raise BadInputError(str(path), "contains zero samples")
    return Dataset(str(path), arrays, labels, fixed)


def validate_for_model(dataset: Dataset, signature: ModelSignature) -> Dataset:
    """Check names, dtypes and shapes against the model inputs; keep only the model's inputs.

    Axis 0 of each array is the sample axis and maps onto the model's batch axis.
    """
    given = set(dataset.inputs) | set(dataset.fixed)
    missing = [spec.name for spec in signature.inputs if spec.name not in given]
    if missing:
        raise BadInputError(
            dataset.source,
            f"missing model input(s) {missing}; the file has {sorted(dataset.inputs)}"
            + (f", fixed {sorted(dataset.fixed)}" if dataset.fixed else "")
            + (" and labels" if dataset.labels is not None else ""),
        )
    unknown = sorted(set(dataset.fixed) - {spec.name for spec in signature.inputs})
    if unknown:
        raise BadInputError(
            dataset.source,
            f"fixed input(s) {unknown} are not model inputs {[s.name for s in signature.inputs]}",
        )
    for spec in signature.inputs:
        if spec.name in dataset.fixed:
            _check_fixed(dataset.source, spec, dataset.fixed[spec.name])
            continue
        array = dataset.inputs[spec.name]
        where = f"{dataset.source}[{spec.name}]"
        if array.dtype != spec.dtype:
            raise BadInputError(where, f"dtype {array.dtype}, the model input expects {spec.dtype}")
        if not spec.shape:
            raise BadInputError(
                where,
                f"the model input is a scalar (rank 0) and cannot take a sample axis; store one value as "
                f"'{FIXED_PREFIX}{spec.name}'",
            )
        if array.ndim != len(spec.shape):
            hint = (
                f"; if it does not follow the samples (recurrent state), store it as '{FIXED_PREFIX}{spec.name}'"
                if array.ndim == len(spec.shape) - 1 or array.ndim == len(spec.shape) + 1
                else ""
            )
            raise BadInputError(
                where,
                f"shape {list(array.shape)} has rank {array.ndim}, model input expects {spec.shape_text} "
                f"(axis 0 is the sample axis){hint}",
            )
        for axis, (got, want) in enumerate(zip(array.shape[1:], spec.shape[1:], strict=True), start=1):
            if want is not None and got != want:
                raise BadInputError(
                    where, f"axis {axis} is {got}, model input expects {want} (shape {spec.shape_text})"
                )
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise BadInputError(where, "contains NaN or infinite values")
    per_sample = [spec for spec in signature.inputs if spec.name not in dataset.fixed]
    fixed_firsts = {
        spec.name: spec.shape[0] for spec in per_sample if spec.shape and spec.shape[0] is not None
    }
    if len(set(fixed_firsts.values())) > 1:
        raise BadInputError(
            dataset.source,
            f"the model's inputs fix different sizes on axis 0 ({fixed_firsts}), so they cannot share a "
            f"sample axis; store the inputs that do not follow the samples as '{FIXED_PREFIX}<input name>'",
        )
    group = ModelSignature(tuple(per_sample), ()).fixed_batch or 1
    if len(dataset) % group:
        first = per_sample[0]
        raise BadInputError(
            dataset.source,
            f"has {len(dataset)} samples, but the model fixes its batch at {group} (input {first.name!r} is "
            f"{first.shape_text}), so it runs {group} samples at a time: give a multiple of {group}",
        )
    return Dataset(
        dataset.source,
        {spec.name: dataset.inputs[spec.name] for spec in signature.inputs if spec.name not in dataset.fixed},
        dataset.labels,
        {spec.name: dataset.fixed[spec.name] for spec in signature.inputs if spec.name in dataset.fixed},
        group,
    )


def _check_fixed(source: str, spec: TensorSpec, array: np.ndarray) -> None:
    """A fixed input is fed as stored: dtype and the full shape must match the model input."""
    where = f"{source}[{FIXED_PREFIX}{spec.name}]"
    if array.dtype != spec.dtype:
        raise BadInputError(where, f"dtype {array.dtype}, the model input expects {spec.dtype}")
    if array.ndim != len(spec.shape) or any(
        want is not None and got != want for got, want in zip(array.shape, spec.shape, strict=True)
    ):
        raise BadInputError(
            where,
            f"shape {list(array.shape)}; a fixed input is fed as stored (no sample axis), the model input "
            f"expects {spec.shape_text}",
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise BadInputError(where, "contains NaN or infinite values")


def load_for_model(path: str | Path, signature: ModelSignature) -> Dataset:
    return validate_for_model(load_npz(path), signature)

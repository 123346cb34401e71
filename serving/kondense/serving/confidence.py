"""What the server observes of its own answers for the confidence-drift gate (pure numpy).

The rule, per answered request, on the model's **first output** (in the model's output order; a request
that does not ask for it is not observed), one observation per row (every position but the last axis):

* classification: the top-1 confidence. The last axis holds the classes. When every value lies in
  [0, 1] and each row sums to 1 (within 1e-3) the output already is a probability vector and is read
  as it is; otherwise it is taken as logits and a softmax is applied first. A single-column output is
  one score: a probability when it lies in [0, 1], else a logit (sigmoid); its confidence is
  max(p, 1 - p).
* embedding: the L2 norm of each row (the last axis is the embedding).
* regression: nothing (an output without a confidence).

Non-float outputs (labels, indices, strings) and non-finite rows are not observed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from kondense.api.techniques import Task

PROBABILITY_TOLERANCE = 1e-3

MEASURES = {Task.CLASSIFICATION: "top1", Task.EMBEDDING: "l2norm"}
"""The ``measure`` label of the exported histogram, per task that has one."""


def _rows(output: np.ndarray) -> np.ndarray | None:
    if output.dtype.kind != "f" or output.size == 0:
        return None
    array = np.asarray(output, dtype=np.float64)
    rows = array.reshape(-1, 1) if array.ndim <= 1 else array.reshape(-1, array.shape[-1])
    return rows[np.isfinite(rows).all(axis=1)]


SMALL_ROW = 64
"""A lone row of at most this many values is measured in plain Python: one answer's few values cost
more in numpy's per-call overhead (tens of µs a request) than in arithmetic."""


def _lone_row(output: np.ndarray) -> list[float] | None:
    """The values of a float output that is one small row (every axis but the last is 1), else None."""
    if output.dtype.kind != "f" or not 0 < output.size <= SMALL_ROW:
        return None
    if output.ndim <= 1:
        return output.tolist() if output.size == 1 else None  # [N]: N rows of one value
    return output.reshape(-1).tolist() if output.size == output.shape[-1] else None


def _top1_of_row(values: list[float]) -> float | None:
    """``top1_confidence`` of one row (None when it is not finite); same rule, in Python floats."""
    if not all(math.isfinite(value) for value in values):
        return None
    if len(values) == 1:
        score = values[0]
        if not 0 <= score <= 1:
            try:
                score = 1.0 / (1.0 + math.exp(-score))
            except OverflowError:  # numpy: exp overflows to inf, the sigmoid to 0
                score = 0.0
        return max(score, 1.0 - score)
    top = max(values)
    # np.allclose(sum, 1, atol): |sum - 1| <= atol + 1e-5 (its default rtol) * 1
    if min(values) >= 0 and top <= 1 and abs(math.fsum(values) - 1.0) <= PROBABILITY_TOLERANCE + 1e-5:
        return top
    return 1.0 / math.fsum(math.exp(value - top) for value in values)  # the softmax at the top value


def top1_confidence(output: np.ndarray) -> np.ndarray:
    """Top-1 confidence per row of a classification output (see the module's rule)."""
    if (row := _lone_row(output)) is not None:
        value = _top1_of_row(row)
        return np.empty(0) if value is None else np.array([value])
    rows = _rows(output)
    if rows is None or len(rows) == 0:
        return np.empty(0)
    if rows.shape[1] == 1:
        scores = rows[:, 0]
        if not ((scores >= 0) & (scores <= 1)).all():
            with np.errstate(over="ignore"):  # exp overflows to inf: the sigmoid is 0
                scores = 1.0 / (1.0 + np.exp(-scores))
        return np.maximum(scores, 1.0 - scores)
    probabilities = (
        (rows >= 0).all()
        and (rows <= 1).all()
        and np.allclose(rows.sum(axis=1), 1.0, atol=PROBABILITY_TOLERANCE)
    )
    if not probabilities:
        shifted = rows - rows.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        rows = exp / exp.sum(axis=1, keepdims=True)
    return np.asarray(rows.max(axis=1))


LONE_ROW_IN_PYTHON = 4096
"""A lone embedding row of at most this many values gets its norm from ``math.hypot`` on a list: right
after a session call has filled the CPU caches with the model, two numpy calls (a float64 copy and a
dot product) cost twice as much (51 against 26 µs for MiniLM's 384 values, Intel Xeon)."""


def l2_norm(output: np.ndarray) -> np.ndarray:
    """L2 norm per row of an embedding output."""
    if output.dtype.kind == "f" and output.ndim >= 2 and 0 < output.size == output.shape[-1]:
        if output.size <= LONE_ROW_IN_PYTHON:
            norm = math.hypot(*output.reshape(-1).tolist())  # no overflow: hypot scales
        else:
            row = output.reshape(-1).astype(np.float64)
            norm = math.sqrt(float(row @ row))
        if math.isfinite(norm):  # else a value is not finite (or squares overflow): the general rule
            return np.array([norm])
    rows = _rows(output)
    if rows is None or len(rows) == 0:
        return np.empty(0)
    return np.asarray(np.linalg.norm(rows, axis=1))


def observations(task: Task | None, first_output: str, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The values to observe for one answer (empty: nothing to observe)."""
    output = outputs.get(first_output)
    if output is None or task is None:
        return np.empty(0)
    if task is Task.CLASSIFICATION:
        return top1_confidence(output)
    if task is Task.EMBEDDING:
        return l2_norm(output)
    return np.empty(0)


def scale_logits(
    outputs: Mapping[str, np.ndarray], factor: float, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Tests and demos only (``--inject-logit-scale``): the named float outputs' logits times ``factor``.
    A probability output is scaled in log space and renormalised (a softmax temperature of 1/factor):
    the argmax never changes, the confidences do."""
    out = dict(outputs)
    for name in names:
        array = out.get(name)
        if array is None or array.dtype.kind != "f" or array.ndim == 0:
            continue
        values = np.asarray(array, dtype=np.float64)
        last = values.shape[-1]
        sums = values.sum(axis=-1)
        if last > 1 and (values >= 0).all() and (values <= 1).all() and np.allclose(sums, 1.0, atol=1e-3):
            logits = np.log(np.clip(values, 1e-12, 1.0)) * factor
            logits -= logits.max(axis=-1, keepdims=True)
            exp = np.exp(logits)
            scaled = exp / exp.sum(axis=-1, keepdims=True)
        else:
            scaled = values * factor
        out[name] = scaled.astype(array.dtype)
    return out

"""Honest evaluation of a variant against its base, in one run.

* Size: bytes of the variant file over bytes of the base file.
* Latency: batch 1 on CPU with a fixed thread count; base and variant interleaved sample by sample
  (alternating which goes first) so load on a shared machine hits both alike; warm-up excluded.
* Accuracy delta by task (lower is better, 0 = same as the base):
  classification: top-1 accuracy of base minus variant with labels, else 1 - agreement with the base;
  embedding: 1 - mean cosine similarity to the base embeddings;
  regression: mean |variant - base| / mean |base| (relative MAE against the base outputs).

The metric functions are pure (arrays in, numbers out); ``measure_*`` do the running.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kondense.api.artifacts import VariantMetrics
from kondense.api.techniques import Task
from kondense.compression.data import Dataset
from kondense.compression.model_files import open_session, run_outputs


@dataclass(frozen=True)
class AccuracyResult:
    delta: float
    details: dict[str, float] = field(default_factory=dict)


def classification_delta(base: np.ndarray, variant: np.ndarray, labels: np.ndarray | None) -> AccuracyResult:
    base_top1, variant_top1 = base.argmax(axis=-1), variant.argmax(axis=-1)
    agreement = float((base_top1 == variant_top1).mean())
    if labels is None:
        return AccuracyResult(1.0 - agreement, {"agreement": agreement})
    labels = labels.reshape(base_top1.shape)
    base_accuracy = float((base_top1 == labels).mean())
    variant_accuracy = float((variant_top1 == labels).mean())
    return AccuracyResult(
        base_accuracy - variant_accuracy,
        {"baseAccuracy": base_accuracy, "variantAccuracy": variant_accuracy, "agreement": agreement},
    )


def embedding_delta(base: np.ndarray, variant: np.ndarray) -> AccuracyResult:
    base2, variant2 = base.reshape(len(base), -1), variant.reshape(len(variant), -1)
    norms = np.linalg.norm(base2, axis=1) * np.linalg.norm(variant2, axis=1)
    cosine = (base2 * variant2).sum(axis=1) / np.maximum(norms, 1e-12)
    mean = float(cosine.mean())
    return AccuracyResult(1.0 - mean, {"meanCosine": mean, "minCosine": float(cosine.min())})


def regression_delta(base: np.ndarray, variant: np.ndarray) -> AccuracyResult:
    mae = float(np.abs(variant - base).mean())
    scale = float(np.abs(base).mean())
    relative = mae / scale if scale > 0 else mae
    return AccuracyResult(relative, {"mae": mae, "baseMeanAbs": scale})


def accuracy_delta(
    task: Task, base: np.ndarray, variant: np.ndarray, labels: np.ndarray | None = None
) -> AccuracyResult:
    base, variant = base.astype(np.float64), variant.astype(np.float64)
    if base.shape != variant.shape:
        raise ValueError(f"variant output shape {variant.shape} differs from the base's {base.shape}")
    if task is Task.CLASSIFICATION:
        return classification_delta(base, variant, labels)
    if task is Task.EMBEDDING:
        return embedding_delta(base, variant)
    return regression_delta(base, variant)


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q))


@dataclass(frozen=True)
class LatencyResult:
    base_p50: float
    base_p99: float
    variant_p50: float
    variant_p99: float
    samples: int


def measure_latency(
    base_path: str | Path,
    variant_path: str | Path,
    dataset: Dataset,
    *,
    runs: int = 200,
    warmup: int = 20,
    threads: int = 1,
) -> LatencyResult:
    """p50/p99 at batch 1, base and variant interleaved, cycling over the data set's samples."""
    sessions = [open_session(base_path, threads=threads), open_session(variant_path, threads=threads)]
    timings: list[list[float]] = [[], []]
    count = len(dataset)
    for step in range(warmup + runs):
        feed = dataset.sample(step % count)
        order = (0, 1) if step % 2 == 0 else (1, 0)
        for which in order:
            start = time.perf_counter()
            sessions[which].run(None, feed)
            elapsed = time.perf_counter() - start
            if step >= warmup:
                timings[which].append(elapsed)
    return LatencyResult(
        base_p50=percentile_ms(timings[0], 50),
        base_p99=percentile_ms(timings[0], 99),
        variant_p50=percentile_ms(timings[1], 50),
        variant_p99=percentile_ms(timings[1], 99),
        samples=runs,
    )


def model_outputs(
    path: str | Path, dataset: Dataset, *, batch_size: int = 64, threads: int = 1
) -> np.ndarray:
    """First output of a model over a whole data set (batched when the model allows it)."""
    session = open_session(path, threads=threads)
    dynamic = all(not isinstance(i.shape[0], int) for i in session.get_inputs() if i.shape)
    return run_outputs(session, dataset.batches(batch_size if dynamic else 1))


@dataclass
class Reference:
    """The base model's outputs on the eval set, computed once and reused by every trial."""

    base_path: Path
    dataset: Dataset
    task: Task
    outputs: np.ndarray

    @classmethod
    def compute(cls, base_path: Path, dataset: Dataset, task: Task, *, threads: int = 1) -> Reference:
        return cls(base_path, dataset, task, model_outputs(base_path, dataset, threads=threads))

    def subset(self, count: int) -> Reference:
        """The first ``count`` samples (cheaper probes, e.g. sensitivity measurement)."""
        if count >= len(self.dataset):
            return self
        return Reference(self.base_path, self.dataset.take(count), self.task, self.outputs[:count])

    def accuracy_of(self, variant_path: str | Path, *, threads: int = 1) -> AccuracyResult:
        return accuracy_delta(
            self.task,
            self.outputs,
            model_outputs(variant_path, self.dataset, threads=threads),
            self.dataset.labels,
        )

    def size_ratio_of(self, variant_path: str | Path) -> float:
        return os.path.getsize(variant_path) / os.path.getsize(self.base_path)


def evaluate_variant(
    reference: Reference,
    variant_path: Path,
    *,
    latency_runs: int = 200,
    warmup: int = 20,
    threads: int = 1,
) -> tuple[VariantMetrics, dict[str, Any]]:
    """All metrics of the final variant; details carry what the numbers are made of."""
    accuracy = reference.accuracy_of(variant_path, threads=threads)
    latency = measure_latency(
        reference.base_path,
        variant_path,
        reference.dataset,
        runs=latency_runs,
        warmup=warmup,
        threads=threads,
    )
    metrics = VariantMetrics(
        sizeRatio=reference.size_ratio_of(variant_path),
        p50Ms=latency.variant_p50,
        p99Ms=latency.variant_p99,
        baseP50Ms=latency.base_p50,
        baseP99Ms=latency.base_p99,
        accuracyDelta=accuracy.delta,
    )
    details = {
        **accuracy.details,
        "baseSizeBytes": os.path.getsize(reference.base_path),
        "sizeBytes": os.path.getsize(variant_path),
        "latencyRuns": latency.samples,
        "latencyWarmup": warmup,
        "threads": threads,
        "evalSamples": len(reference.dataset),
        "labels": reference.dataset.labels is not None,
    }
    return metrics, details

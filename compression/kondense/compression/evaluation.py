"""Honest evaluation of a variant against its base, in one run.

* Size: bytes of the variant file over bytes of the base file.
* Latency: batch 1 on CPU with a fixed thread count; base and variant interleaved sample by sample
  (alternating which goes first) so load on a shared machine hits both alike; warm-up excluded.
* Accuracy delta by task (lower is better, 0 = same as the base):
  classification: top-1 accuracy of base minus variant with labels, else 1 - agreement with the base;
  the class axis is the last one, so ``[N, T, C]`` outputs (per-timestep classification, e.g. a text
  recogniser) are judged per timestep: the delta is the fraction of timesteps that disagree (labels
  ``[N, T]``, negative labels = padding, ignored), ``sequenceAgreement`` the fraction of whole
  sequences that agree;
  embedding: 1 - mean cosine similarity to the base embeddings;
  regression: mean |variant - base| / mean |base| (relative MAE against the base outputs); dense maps
  (detection heat maps ``[N, C, H, W]``) are judged over the whole map, the worst sample reported too;
  integer outputs (class indices, token ids): the fraction of elements that differ, whatever the task.
* Multi-output models: the *first* output is the judged one (its delta is the accuracy delta and the
  gate's number); every other output is compared too (relative MAE, or mismatch for integers) and
  reported under ``otherOutputs`` so a variant that breaks a secondary head is visible.
* Footprint (per model, base and variant alike): session load time (cold start: ``InferenceSession``
  creation from the file), peak resident memory while loading and running it at batch 1, and process
  CPU seconds per 1,000 batch-1 inferences (the basis of cost per inference).

The metric functions are pure (arrays in, numbers out); ``measure_*`` do the running.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kondense.api.artifacts import VariantMetrics
from kondense.api.techniques import Task
from kondense.compression.data import Dataset
from kondense.compression.hardware import evaluation_hardware
from kondense.compression.integrity import model_bytes
from kondense.compression.model_files import open_session, run_outputs


@dataclass(frozen=True)
class AccuracyResult:
    delta: float
    details: dict[str, Any] = field(default_factory=dict)


def classification_delta(base: np.ndarray, variant: np.ndarray, labels: np.ndarray | None) -> AccuracyResult:
    """Top-1 over the last axis; ``[N, T, C]`` is judged per timestep (see the module docstring)."""
    base_top1, variant_top1 = base.argmax(axis=-1), variant.argmax(axis=-1)
    same = base_top1 == variant_top1
    details: dict[str, Any] = {}
    if base_top1.ndim >= 2:  # sequences: also how many whole sequences agree
        details["timesteps"] = float(np.prod(base_top1.shape[1:]))
        details["sequenceAgreement"] = float(same.reshape(len(same), -1).all(axis=1).mean())
    agreement = float(same.mean())
    details["agreement"] = agreement
    if labels is None:
        return AccuracyResult(1.0 - agreement, details)
    if labels.size != base_top1.size:
        raise ValueError(
            f"labels of shape {list(labels.shape)} do not match the predictions' {list(base_top1.shape)} "
            "(one class index per sample, or per timestep for [N, T, C] outputs)"
        )
    labels = labels.reshape(base_top1.shape)
    valid = labels >= 0  # negative labels mark padding
    if not valid.any():
        raise ValueError("every label is negative (padding); nothing to judge")
    base_accuracy = float((base_top1 == labels)[valid].mean())
    variant_accuracy = float((variant_top1 == labels)[valid].mean())
    details.update({"baseAccuracy": base_accuracy, "variantAccuracy": variant_accuracy})
    if not valid.all():
        details["ignoredLabels"] = float((~valid).sum())
    return AccuracyResult(base_accuracy - variant_accuracy, details)


def mismatch_delta(base: np.ndarray, variant: np.ndarray, labels: np.ndarray | None = None) -> AccuracyResult:
    """Integer outputs (class indices, token ids): fraction of elements that differ, or with labels of
    the same shape the accuracy difference."""
    agreement = float((base == variant).mean())
    if labels is None or labels.size != base.size:
        return AccuracyResult(1.0 - agreement, {"agreement": agreement})
    labels = labels.reshape(base.shape)
    valid = labels >= 0
    base_accuracy = float((base == labels)[valid].mean())
    variant_accuracy = float((variant == labels)[valid].mean())
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
    """Relative MAE over everything (a dense map counts every pixel); also the worst sample's."""
    error = np.abs(variant - base)
    mae = float(error.mean())
    scale = float(np.abs(base).mean())
    relative = mae / scale if scale > 0 else mae
    details: dict[str, Any] = {"mae": mae, "baseMeanAbs": scale}
    if base.ndim >= 2 and len(base) > 1:
        per_sample = error.reshape(len(base), -1).mean(axis=1)
        sample_scale = np.abs(base).reshape(len(base), -1).mean(axis=1)
        worst = per_sample / np.where(sample_scale > 0, sample_scale, 1.0)
        details["maxSampleRelativeMae"] = float(worst.max())
    return AccuracyResult(relative, details)


def accuracy_delta(
    task: Task, base: np.ndarray, variant: np.ndarray, labels: np.ndarray | None = None
) -> AccuracyResult:
    if base.shape != variant.shape:
        raise ValueError(f"variant output shape {variant.shape} differs from the base's {base.shape}")
    if base.dtype.kind in "iub" and variant.dtype.kind in "iub":
        return mismatch_delta(base, variant, labels)
    base, variant = base.astype(np.float64), variant.astype(np.float64)
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
    base_cpu_seconds_per_1k: float | None = None
    variant_cpu_seconds_per_1k: float | None = None


def measure_latency(
    base_path: str | Path,
    variant_path: str | Path,
    dataset: Dataset,
    *,
    runs: int = 200,
    warmup: int = 20,
    threads: int = 1,
) -> LatencyResult:
    """p50/p99 at batch 1, base and variant interleaved, cycling over the data set's samples.

    Also the process CPU time of the timed runs (all ORT threads) per 1,000 inferences.
    """
    sessions = [open_session(base_path, threads=threads), open_session(variant_path, threads=threads)]
    timings: list[list[float]] = [[], []]
    cpu = [0.0, 0.0]
    count = len(dataset)
    for step in range(warmup + runs):
        feed = dataset.sample(step % count)
        order = (0, 1) if step % 2 == 0 else (1, 0)
        for which in order:
            cpu_start = time.process_time()
            start = time.perf_counter()
            sessions[which].run(None, feed)
            elapsed = time.perf_counter() - start
            cpu_elapsed = time.process_time() - cpu_start
            if step >= warmup:
                timings[which].append(elapsed)
                cpu[which] += cpu_elapsed
    return LatencyResult(
        base_p50=percentile_ms(timings[0], 50),
        base_p99=percentile_ms(timings[0], 99),
        variant_p50=percentile_ms(timings[1], 50),
        variant_p99=percentile_ms(timings[1], 99),
        samples=runs,
        base_cpu_seconds_per_1k=cpu[0] * 1000.0 / runs,
        variant_cpu_seconds_per_1k=cpu[1] * 1000.0 / runs,
    )


@dataclass(frozen=True)
class Footprint:
    load_ms: float  # InferenceSession creation from the file in a fresh process (cold start), median
    peak_memory_mb: float | None  # peak RSS growth while loading and running, median; None: not measurable


def _proc_status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(field_name + ":"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _footprint_in_this_process(model: str, feed_dir: str, runs: int, threads: int) -> dict[str, float | None]:
    """Runs in a fresh interpreter: RSS before the load, load time, peak RSS after ``runs`` inferences.

    The peak is ``VmHWM`` of this process (not ``ru_maxrss``, which Linux carries over from the parent
    across fork+exec), reset after the imports when the kernel allows (``/proc/self/clear_refs``).
    """
    import json

    import onnxruntime  # noqa: F401  # imported before the baseline so its own pages are not counted

    folder = Path(feed_dir)
    names = json.loads((folder / "names.json").read_text(encoding="utf-8"))
    feed = {name: np.load(folder / f"{i}.npy", allow_pickle=False) for i, name in enumerate(names)}
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # reset the peak-RSS mark to the current RSS (Linux >= 4.0)
    except OSError:
        pass  # the mark then includes the imports: a slight over-estimate, same for base and variant
    before = _proc_status_kib("VmRSS")
    start = time.perf_counter()
    session = open_session(model, threads=threads)
    load_ms = (time.perf_counter() - start) * 1000.0
    for _ in range(runs):
        session.run(None, feed)
    peak_kib = _proc_status_kib("VmHWM")
    peak = None if before is None or peak_kib is None else max(peak_kib - before, 0) / 1024.0
    return {"loadMs": load_ms, "peakMemoryMB": peak}


def measure_footprint(
    paths: list[str | Path], dataset: Dataset, *, rounds: int = 3, runs: int = 5, threads: int = 1
) -> list[Footprint]:
    """Load time and peak memory of each model, each measured in a fresh process, rounds interleaved.

    Peak memory is the child's peak resident set (``VmHWM``) over its resident set just before the
    load (after importing ONNX Runtime): weights, arenas and the buffers of ``runs`` batch-1
    inferences on the first sample. A fresh process per measurement keeps one model's freed pages
    from hiding the next one's growth. Where ``/proc`` is missing, ``peak_memory_mb`` is None.
    """
    import json
    import subprocess
    import sys
    import tempfile

    loads: list[list[float]] = [[] for _ in paths]
    peaks: list[list[float]] = [[] for _ in paths]
    with tempfile.TemporaryDirectory(prefix="kondense-footprint-") as tmp:
        feed_dir = tmp  # one .npy per input (names may be anything, even 'file'), names in order
        sample = dataset.sample(0)
        for i, array in enumerate(sample.values()):
            np.save(Path(tmp) / f"{i}.npy", array, allow_pickle=False)
        (Path(tmp) / "names.json").write_text(json.dumps(list(sample)), encoding="utf-8")
        for _ in range(rounds):
            for index, path in enumerate(paths):
                code = (
                    "import json, sys; from kondense.compression.evaluation import _footprint_in_this_process as f; "
                    "print(json.dumps(f(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))"
                )
                done = subprocess.run(
                    [sys.executable, "-c", code, str(path), feed_dir, str(runs), str(threads)],
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=False,
                )
                if done.returncode != 0:
                    raise RuntimeError(
                        f"footprint measurement of {path} failed: {done.stderr.strip().splitlines()[-1:]}"
                    )
                result = json.loads(done.stdout.strip().splitlines()[-1])
                loads[index].append(float(result["loadMs"]))
                if result["peakMemoryMB"] is not None:
                    peaks[index].append(float(result["peakMemoryMB"]))
    return [
        Footprint(float(np.median(load)), float(np.median(peak)) if peak else None)
        for load, peak in zip(loads, peaks, strict=True)
    ]


def output_delta(base: np.ndarray, variant: np.ndarray) -> AccuracyResult:
    """A secondary output against the base: mismatch for integers, relative MAE for floats."""
    if base.shape != variant.shape:
        raise ValueError(f"variant output shape {variant.shape} differs from the base's {base.shape}")
    if base.dtype.kind in "iub":
        return mismatch_delta(base, variant)
    return regression_delta(base.astype(np.float64), variant.astype(np.float64))


def _batch_size(session: Any, dataset: Dataset, wanted: int) -> int:
    per_sample = [i for i in session.get_inputs() if i.name in dataset.inputs]
    dynamic = dataset.batchable and all(i.shape and not isinstance(i.shape[0], int) for i in per_sample)
    return wanted if dynamic else dataset.group  # a fixed batch: its group of samples per run


def all_model_outputs(
    path: str | Path, dataset: Dataset, *, batch_size: int = 64, threads: int = 1
) -> dict[str, np.ndarray]:
    """Every output of a model over a whole data set, in the model's output order."""
    session = open_session(path, threads=threads)
    names = [o.name for o in session.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for feed in dataset.batches(_batch_size(session, dataset, batch_size)):
        for name, value in zip(names, session.run(names, feed), strict=True):
            parts[name].append(np.asarray(value))
    return {name: _concat_samples(name, chunks) for name, chunks in parts.items()}


def _concat_samples(name: str, chunks: list[np.ndarray]) -> np.ndarray:
    if all(c.ndim == 0 for c in chunks):  # a scalar output per run: one value per sample
        return np.stack(chunks)
    try:
        return np.concatenate(chunks, axis=0)
    except ValueError:  # per-sample shapes differ (e.g. variable length): compare flattened
        raise ValueError(
            f"output {name!r} changes shape from sample to sample {[list(c.shape) for c in chunks[:3]]}; "
            "give evaluation data whose samples share one shape (e.g. pad to one length)"
        ) from None


def model_outputs(
    path: str | Path, dataset: Dataset, *, batch_size: int = 64, threads: int = 1
) -> np.ndarray:
    """First output of a model over a whole data set (batched when the model allows it)."""
    session = open_session(path, threads=threads)
    return run_outputs(session, dataset.batches(_batch_size(session, dataset, batch_size)))


@dataclass
class Reference:
    """The base model's outputs on the eval set, computed once and reused by every trial.

    ``outputs`` is the judged (first) output; ``others`` the remaining outputs by name.
    """

    base_path: Path
    dataset: Dataset
    task: Task
    outputs: np.ndarray
    others: dict[str, np.ndarray] = field(default_factory=dict)
    judged: str | None = None
    # The user's file when ``base_path`` is a runnable copy of it (intake's opset upgrade of a model
    # ONNX Runtime cannot load): sizes are always relative to what the user gave.
    size_path: Path | None = None

    @property
    def base_bytes(self) -> int:
        return model_bytes(self.size_path or self.base_path)

    @classmethod
    def compute(
        cls, base_path: Path, dataset: Dataset, task: Task, *, threads: int = 1, size_path: Path | None = None
    ) -> Reference:
        outputs = all_model_outputs(base_path, dataset, threads=threads)
        judged = next(iter(outputs))
        first = outputs.pop(judged)
        return cls(base_path, dataset, task, first, outputs, judged, size_path)

    def subset(self, count: int) -> Reference:
        """The first ``count`` samples (cheaper probes, e.g. sensitivity measurement)."""
        if count >= len(self.dataset):
            return self
        dataset = self.dataset.take(count)  # whole groups when the model fixes its batch
        count = len(dataset)
        others = {k: v[:count] for k, v in self.others.items()}
        return dataclasses.replace(self, dataset=dataset, outputs=self.outputs[:count], others=others)

    def accuracy_of(self, variant_path: str | Path, *, threads: int = 1) -> AccuracyResult:
        """The judged output's delta; other outputs' deltas in ``details['otherOutputs']``."""
        if not self.others:
            variant = model_outputs(variant_path, self.dataset, threads=threads)
            return accuracy_delta(self.task, self.outputs, variant, self.dataset.labels)
        outputs = all_model_outputs(variant_path, self.dataset, threads=threads)
        judged = outputs.get(self.judged or "", next(iter(outputs.values())))
        result = accuracy_delta(self.task, self.outputs, judged, self.dataset.labels)
        others = {
            name: output_delta(base, outputs[name]).delta if name in outputs else float("nan")
            for name, base in self.others.items()
        }
        details: dict[str, Any] = {**result.details, "judgedOutput": self.judged, "otherOutputs": others}
        return AccuracyResult(result.delta, details)

    def size_ratio_of(self, variant_path: str | Path) -> float:
        return model_bytes(variant_path) / self.base_bytes


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
    base_footprint, variant_footprint = measure_footprint(
        [reference.base_path, variant_path], reference.dataset, threads=threads
    )
    metrics = VariantMetrics(
        sizeRatio=reference.size_ratio_of(variant_path),
        p50Ms=latency.variant_p50,
        p99Ms=latency.variant_p99,
        baseP50Ms=latency.base_p50,
        baseP99Ms=latency.base_p99,
        accuracyDelta=accuracy.delta,
        peakMemoryMB=variant_footprint.peak_memory_mb,
        basePeakMemoryMB=base_footprint.peak_memory_mb,
        loadMs=variant_footprint.load_ms,
        baseLoadMs=base_footprint.load_ms,
        cpuSecondsPer1k=latency.variant_cpu_seconds_per_1k,
        baseCpuSecondsPer1k=latency.base_cpu_seconds_per_1k,
    )
    hardware = evaluation_hardware()
    details = {
        **accuracy.details,
        "judgedOutput": reference.judged,
        "hardware": {**hardware.record(), "summary": hardware.summary()},
        "baseSizeBytes": reference.base_bytes,
        "sizeBytes": model_bytes(variant_path),
        "latencyRuns": latency.samples,
        "latencyWarmup": warmup,
        "threads": threads,
        "evalSamples": len(reference.dataset),
        "labels": reference.dataset.labels is not None,
    }
    return metrics, details

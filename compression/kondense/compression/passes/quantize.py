"""ONNX Runtime int8 quantization (dynamic and static QDQ) with accuracy-aware tuning.

Tuning, when the pipeline has an accuracy budget and ``tune`` is on, tries configurations in order of
expected speed and stops at the first one within budget:

1. per-tensor weights, 2. per-channel weights, 3. per-channel with 7-bit weights (reduce-range),
4. the best of those with the most sensitive nodes kept in float32, added one at a time.

Sensitivity is measured, not guessed: each weight-bearing node is kept in float32 alone and the
resulting accuracy gain over the best configuration is its sensitivity. Every configuration tried is
recorded as a trial. If none meets the budget the best one is kept and the result says so.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from kondense.api.artifacts import Trial
from kondense.api.techniques import DynamicInt8Params, StaticInt8Params, Technique
from kondense.compression.data import Dataset
from kondense.compression.errors import BadInputError, UnsupportedModelError
from kondense.compression.evaluation import Reference
from kondense.compression.passes import Pass, PassContext, PassResult, register

# Op types ORT quantizes that carry a weight initializer; only these can be kept in float32 usefully.
WEIGHT_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "Gather", "Attention", "LSTM"})
MAX_SENSITIVITY_PROBES = 96
MAX_FP32_NODES = 12
SENSITIVITY_SAMPLES = 128


def most_accurate_full_trial(trials: list[Trial], full_samples: int) -> int:
    """Index of the most accurate trial measured on the whole evaluation set.

    Sensitivity probes (and their baseline) are measured on a subset: their deltas are not comparable
    with full-set deltas and their models are never candidates for the artifact.
    """
    full = [i for i, t in enumerate(trials) if t.evalSamples == full_samples and t.accuracyDelta is not None]
    if not full:
        raise ValueError("no trial was measured on the full evaluation set")
    return min(full, key=lambda i: trials[i].accuracyDelta or 0.0)


@dataclass(frozen=True)
class Int8Config:
    """One point of the tuning space."""

    per_channel: bool
    reduce_range: bool
    exclude: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "perChannel": self.per_channel,
            "reduceRange": self.reduce_range,
            "nodesToExclude": list(self.exclude),
        }


def tuning_ladder(per_channel: bool, reduce_range: bool, user_exclude: tuple[str, ...]) -> list[Int8Config]:
    """Configurations in order of expected speed (before sensitivity-driven float32 fallbacks).

    The user's own choices are a floor: asking for per-channel skips the per-tensor attempt.
    """
    points = [(False, False), (True, False), (True, True)]
    chosen = [(pc, rr) for pc, rr in points if pc >= per_channel and rr >= reduce_range]
    if (per_channel, reduce_range) not in chosen:
        chosen.insert(0, (per_channel, reduce_range))
    return [Int8Config(pc, rr, user_exclude) for pc, rr in chosen]


def weight_nodes(model: Any) -> list[str]:
    """Names of nodes whose op ORT quantizes and that read a float initializer (a weight)."""
    from onnx import TensorProto

    floats = {
        i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT and len(i.dims) >= 2
    }
    return [n.name for n in model.graph.node if n.op_type in WEIGHT_OPS and n.name and floats & set(n.input)]


class CalibrationReader:
    """ORT CalibrationDataReader over a data set (batch 1 unless the model takes any batch size)."""

    def __init__(self, dataset: Dataset, limit: int, batch_size: int) -> None:
        self._batches = iter(dataset.take(limit).batches(batch_size))

    def get_next(self) -> dict[str, Any] | None:
        return next(self._batches, None)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._batches


def preprocess(source: Path, work_dir: Path) -> tuple[Path, str | None]:
    """ORT's quantization pre-processing (shape inference + graph clean-up); returns (path, note)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = work_dir / "preprocessed.onnx"
    try:
        quant_pre_process(str(source), str(target))
    except Exception as exc:  # pre-processing is an optimisation: quantize the original if it fails
        return source, f"ORT pre-processing skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return target, None


class Int8Pass(Pass):
    technique: ClassVar[Technique]
    # Static quantization needs ORT's pre-processing (shape inference, clean graph) for calibration.
    # Dynamic quantization does not; on MiniLM the pre-processed variant measured ~12% slower at
    # the same accuracy (ORT fuses fewer ops at load time), so the dynamic pass quantizes the model as is.
    preprocess_first: ClassVar[bool] = True
    params: DynamicInt8Params | StaticInt8Params

    def quantize(self, source: Path, destination: Path, config: Int8Config, context: PassContext) -> None:
        raise NotImplementedError

    def prepare(self, source: Path, context: PassContext) -> None:
        """Hook for one-time work shared by all trials (calibration)."""

    def run(self, source: Path, destination: Path, context: PassContext) -> PassResult:
        import onnx

        details: dict[str, Any] = {}
        if self.preprocess_first:
            prepared, note = preprocess(source, context.work_dir)
            details["preprocessed"] = note is None
            if note:
                details["note"] = note
        else:
            prepared = source
            details["preprocessed"] = False
        model = onnx.load(str(prepared), load_external_data=False)
        candidates = weight_nodes(model)
        unknown = sorted(set(self.params.nodesToExclude) - {n.name for n in model.graph.node})
        if unknown:
            raise BadInputError("params.nodesToExclude", f"no such node(s) in the model: {unknown[:10]}")
        if not candidates:
            raise UnsupportedModelError(
                str(source), "no MatMul/Gemm/Conv/Gather node with a float weight to quantize"
            )
        self.prepare(prepared, context)

        budget = context.max_accuracy_delta
        user_exclude = tuple(self.params.nodesToExclude)
        trials: list[Trial] = []
        files: list[Path] = []
        counter = iter(range(10_000))

        def attempt(config: Int8Config, reference: Reference, note: str | None = None) -> float:
            path = context.work_dir / f"trial-{next(counter)}.onnx"
            self.quantize(prepared, path, config, context)
            accuracy = reference.accuracy_of(path, threads=context.threads)
            size_ratio = context.reference.size_ratio_of(path)
            trials.append(
                Trial(
                    config=config.as_dict(),
                    accuracyDelta=accuracy.delta,
                    sizeRatio=size_ratio,
                    withinBudget=budget is None or accuracy.delta <= budget,
                    message=note,
                    evalSamples=len(reference.dataset),
                )
            )
            files.append(path)
            return accuracy.delta

        if not (self.params.tune and budget is not None):
            config = Int8Config(self.params.perChannel, self.params.reduceRange, user_exclude)
            context.progress.start(f"{self.technique}: quantizing", total=1)
            attempt(config, context.reference)
            context.progress.finish()
            shutil.move(files[0], destination)
            return PassResult({**details, "tuned": False, "quantizedNodes": len(candidates)}, trials, None)

        ladder = tuning_ladder(self.params.perChannel, self.params.reduceRange, user_exclude)
        context.progress.start(f"{self.technique}: tuning", total=len(ladder))
        chosen: int | None = None
        for config in ladder:
            delta = attempt(config, context.reference)
            context.progress.advance()
            if delta <= budget:
                chosen = len(trials) - 1
                break
        context.progress.finish()

        if chosen is None:
            chosen = self._fp32_fallback(attempt, trials, candidates, user_exclude, context)

        within = trials[chosen].withinBudget if chosen is not None else False
        if chosen is None:  # keep the most accurate configuration tried; the gate will fail
            chosen = most_accurate_full_trial(trials, len(context.reference.dataset))
        trials[chosen].selected = True  # type: ignore[attr-defined]  # extra field, allowed by the model
        shutil.move(files[chosen], destination)
        for path in files:
            path.unlink(missing_ok=True)
        details.update(
            {
                "tuned": True,
                "quantizedNodes": len(candidates) - len(trials[chosen].config["nodesToExclude"]),
                "selectedConfig": trials[chosen].config,
            }
        )
        return PassResult(details, trials, within)

    def _fp32_fallback(
        self,
        attempt: Any,
        trials: list[Trial],
        candidates: list[str],
        user_exclude: tuple[str, ...],
        context: PassContext,
    ) -> int | None:
        """Measure each node's sensitivity, then keep the worst offenders in float32 one by one."""
        budget = context.max_accuracy_delta
        assert budget is not None
        best_index = most_accurate_full_trial(trials, len(context.reference.dataset))
        best_cfg = trials[best_index].config
        best = Int8Config(best_cfg["perChannel"], best_cfg["reduceRange"], user_exclude)
        best_delta = trials[best_index].accuracyDelta or 0.0
        probe_reference = context.reference.subset(SENSITIVITY_SAMPLES)
        probe_base = best_delta if len(probe_reference.dataset) == len(context.reference.dataset) else None
        probes = [n for n in candidates if n not in user_exclude][:MAX_SENSITIVITY_PROBES]

        context.progress.start(f"{self.technique}: measuring node sensitivity", total=len(probes) + 1)
        if probe_base is None:
            probe_base = attempt(best, probe_reference, "sensitivity baseline")
            trials[-1].withinBudget = False  # measured on the subset: never the artifact
        context.progress.advance()
        gains: list[tuple[float, str]] = []
        for node in probes:
            delta = attempt(
                replace(best, exclude=(*user_exclude, node)), probe_reference, f"sensitivity of {node}"
            )
            gains.append((probe_base - delta, node))
            context.progress.advance()
        context.progress.finish()
        # Sensitivity probes are trials too, but never candidates for the artifact: they were measured
        # on a subset, so only full-set trials below can be selected.
        for trial in trials[len(trials) - len(probes) :]:
            trial.withinBudget = False
        # At least one weight node stays quantized: a variant with none would not be int8 at all.
        limit = min(MAX_FP32_NODES, len(candidates) - len(user_exclude) - 1)
        ranked = [node for gain, node in sorted(gains, reverse=True) if gain > 0][: max(limit, 0)]

        context.progress.start(f"{self.technique}: keeping sensitive nodes in float32", total=len(ranked))
        kept: list[str] = []
        for node in ranked:
            kept.append(node)
            delta = attempt(
                replace(best, exclude=(*user_exclude, *kept)), context.reference, f"float32: {node}"
            )
            context.progress.advance()
            if delta <= budget:
                context.progress.finish()
                return len(trials) - 1
        context.progress.finish()
        return None


@register
class DynamicInt8Pass(Int8Pass):
    technique = Technique.DYNAMIC_INT8
    preprocess_first = False
    params: DynamicInt8Params

    def quantize(self, source: Path, destination: Path, config: Int8Config, context: PassContext) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            str(source),
            str(destination),
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            weight_type=QuantType.QInt8 if self.params.weightType == "int8" else QuantType.QUInt8,
            nodes_to_exclude=list(config.exclude),
        )


@register
class StaticInt8Pass(Int8Pass):
    technique = Technique.STATIC_INT8
    params: StaticInt8Params

    def prepare(self, source: Path, context: PassContext) -> None:
        self._cache = context.work_dir / "calibration-cache.json"
        self._cache.unlink(missing_ok=True)

    def quantize(self, source: Path, destination: Path, config: Int8Config, context: PassContext) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        from kondense.compression.model_files import load_model, signature_of

        methods = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }
        types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
        reader = None
        if context.calibration is None:
            raise BadInputError("calibration", "static-int8 needs calibration data")
        if not self._cache.is_file():  # calibrate once; later trials reuse the cached tensor ranges
            dynamic = signature_of(load_model(source, with_weights=False)).dynamic_batch
            reader = CalibrationReader(
                context.calibration, self.params.calibrationSamples, 16 if dynamic else 1
            )
        quantize_static(
            str(source),
            str(destination),
            reader,  # duck-typed CalibrationDataReader
            quant_format=QuantFormat.QDQ,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            activation_type=types[self.params.activationType],
            weight_type=types[self.params.weightType],
            nodes_to_exclude=list(config.exclude),
            calibrate_method=methods[self.params.calibrationMethod],
            calibration_cache_path=str(self._cache),
        )

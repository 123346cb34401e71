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

import contextlib
import re
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
MAX_RECOVERIES = 8  # invalid quantized graphs repaired per pass before giving up
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
    weight_ops_only: bool = False  # static: quantize only weight ops' activations (not Add/Mul/Reduce...)

    def as_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "perChannel": self.per_channel,
            "reduceRange": self.reduce_range,
            "nodesToExclude": list(self.exclude),
        }
        if self.weight_ops_only:
            config["weightOpsOnly"] = True
        return config


def tuning_ladder(per_channel: bool, reduce_range: bool, user_exclude: tuple[str, ...]) -> list[Int8Config]:
    """Configurations in order of expected speed (before sensitivity-driven float32 fallbacks).

    The user's own choices are a floor: asking for per-channel skips the per-tensor attempt.
    """
    points = [(False, False), (True, False), (True, True)]
    chosen = [(pc, rr) for pc, rr in points if pc >= per_channel and rr >= reduce_range]
    if (per_channel, reduce_range) not in chosen:
        chosen.insert(0, (per_channel, reduce_range))
    return [Int8Config(pc, rr, user_exclude) for pc, rr in chosen]


def subgraph_weight_nodes(model: Any) -> list[tuple[str, str]]:
    """(enclosing node, op) of weight ops inside If/Loop/Scan bodies, which ORT's quantizer skips."""
    from onnx import AttributeProto

    found: list[tuple[str, str]] = []

    def walk(graph: Any, owner: str | None) -> None:
        for node in graph.node:
            if owner is not None and node.op_type in WEIGHT_OPS:
                found.append((owner, node.op_type))
            for attr in node.attribute:
                bodies = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
                for body in bodies:
                    walk(body, owner or f"{node.op_type} {node.name!r}")

    walk(model.graph, None)
    return found


def no_weights_reason(model: Any) -> str:
    """One sentence on why a graph has nothing int8 quantization could work on."""
    inside = subgraph_weight_nodes(model)
    if inside:
        owners = sorted({owner for owner, _ in inside})
        ops = sorted({op for _, op in inside})
        return (
            f"its {len(inside)} weight node(s) ({'/'.join(ops)}) all sit inside the subgraphs of "
            f"{', '.join(owners[:3])}, and ONNX Runtime's quantizer only quantizes the main graph"
        )
    ops = sorted({n.op_type for n in model.graph.node if n.op_type in WEIGHT_OPS})
    if ops:
        return f"its {'/'.join(ops)} node(s) read no float initializer of rank >= 2 (weights are computed at run time)"
    return "no MatMul/Gemm/Conv/Gather node with a float weight to quantize"


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


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def preprocess(source: Path, work_dir: Path) -> tuple[Path, str | None]:
    """ORT's quantization pre-processing (shape inference + graph clean-up); returns (path, note).

    ORT's symbolic shape inference gives up on some graphs ("Incomplete symbolic shape inference",
    e.g. dynamic H×W detectors): then pre-processing runs again with ONNX's shape inference only.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = (work_dir / "preprocessed.onnx").resolve()
    source = source.resolve()
    try:
        # ORT's pre-processing leaves a <uuid>.data copy of the weights in the current directory:
        # run it from the work directory (absolute paths above).
        with contextlib.chdir(work_dir.resolve()):
            quant_pre_process(str(source), str(target))
        return target, None
    except Exception as exc:  # pre-processing is an optimisation: degrade, never fail
        first = _first_line(exc)
    try:
        with contextlib.chdir(work_dir.resolve()):
            quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
        return target, f"ORT pre-processing without symbolic shape inference ({first})"
    except Exception as exc:
        return source, f"ORT pre-processing skipped: {first}; then {_first_line(exc)}"


def load_problem(path: Path) -> str | None:
    """Why ONNX Runtime refuses to load ``path`` (first line of its error), or None if it loads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types (InvalidGraph, Fail, ...)
        return str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
    return None


_NODE_PATTERNS = (
    re.compile(r'In Node, \("([^"]*)", (\w+)'),
    re.compile(r"[Nn]ode \(([^)]+)\)"),
    re.compile(r"Name:'([^']+)'"),
)
_QUANT_SUFFIXES = ("_DequantizeLinear", "_QuantizeLinear", "_quantized", "_quant", "_dequant", "_output_0")


def offending_nodes(problem: str, model: Any) -> list[str]:
    """Original node names behind a quantized node named in ORT's load error.

    ORT's quantizer names what it adds after the tensor or node it quantizes
    (``<tensor>_DequantizeLinear``, ``<node>_quant``); this maps such a name back to the original node
    that produced or consumes that tensor, or that carries that name.
    """
    names = next((m.group(1) for pattern in _NODE_PATTERNS if (m := pattern.search(problem))), None)
    if not names:
        return []
    stem = names
    changed = True
    while changed:
        changed = False
        for suffix in _QUANT_SUFFIXES:
            if stem.endswith(suffix):
                stem, changed = stem[: -len(suffix)], True
    by_name = {n.name for n in model.graph.node}
    # onnxconverter-common's float16 casts: <node>_input_cast<k>, <node>_output_cast<k>, <node>_cast_to_<x>
    converter_owner = re.split(r"_(?:input_cast|output_cast|cast_to_)", names)[0]
    for candidate in (names, stem, converter_owner):
        if candidate in by_name:
            return [candidate]
    consumers = [n.name for n in model.graph.node if stem in n.input and n.name]
    producers = [n.name for n in model.graph.node if stem in n.output and n.name]
    return consumers or producers


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
        known = {n.name for n in model.graph.node} | {
            n.name for n in onnx.load(str(source), load_external_data=False).graph.node
        }
        unknown = sorted(set(self.params.nodesToExclude) - known)
        if unknown:
            raise BadInputError("params.nodesToExclude", f"no such node(s) in the model: {unknown[:10]}")
        if not candidates:
            raise UnsupportedModelError(str(source), f"nothing to quantize: {no_weights_reason(model)}")
        # Graphs to quantize, best first: the pre-processed (fused) one, then the unfused intake graph.
        self._graphs = [prepared] if prepared == source else [prepared, source]
        # nodes kept float32 for validity, per weight granularity (per-channel and per-tensor differ)
        self._forced: dict[bool, list[str]] = {False: [], True: []}
        self._recovery: list[str] = []
        self.prepare(prepared, context)

        budget = context.max_accuracy_delta
        user_exclude = tuple(self.params.nodesToExclude)
        trials: list[Trial] = []
        files: list[Path] = []
        counter = iter(range(10_000))

        def attempt(config: Int8Config, reference: Reference, note: str | None = None) -> float:
            path = context.work_dir / f"trial-{next(counter)}.onnx"
            config = self.quantize_checked(path, config, context)
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
            details.update(self._recovery_details())
            quantized = len(self.candidates()) - len(trials[0].config["nodesToExclude"])
            return PassResult({**details, "tuned": False, "quantizedNodes": quantized}, trials, None)

        ladder = tuning_ladder(self.params.perChannel, self.params.reduceRange, user_exclude)
        ladder += self.extra_rungs(ladder)
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
            # after a recovery the graph quantized may be the unfused one: its own node names
            best_pc = bool(
                trials[most_accurate_full_trial(trials, len(context.reference.dataset))].config["perChannel"]
            )
            user_exclude = tuple(dict.fromkeys((*user_exclude, *self._forced[best_pc])))
            chosen = self._fp32_fallback(attempt, trials, self.candidates(), user_exclude, context)

        within = trials[chosen].withinBudget if chosen is not None else False
        if chosen is None:  # keep the most accurate configuration tried; the gate will fail
            chosen = most_accurate_full_trial(trials, len(context.reference.dataset))
        trials[chosen].selected = True  # type: ignore[attr-defined]  # extra field, allowed by the model
        shutil.move(files[chosen], destination)
        for path in files:
            path.unlink(missing_ok=True)
        details.update(self._recovery_details())
        details.update(
            {
                "tuned": True,
                "quantizedNodes": len(self.candidates()) - len(trials[chosen].config["nodesToExclude"]),
                "selectedConfig": trials[chosen].config,
            }
        )
        return PassResult(details, trials, within)

    def extra_rungs(self, ladder: list[Int8Config]) -> list[Int8Config]:
        """Configurations a technique adds after the common ladder (none by default)."""
        return []

    def candidates(self) -> list[str]:
        import onnx

        return weight_nodes(onnx.load(str(self._graphs[0]), load_external_data=False))

    def _recovery_details(self) -> dict[str, Any]:
        if not self._recovery:
            return {}
        return {
            "recovered": self._recovery,
            "quantizedGraph": "pre-processed" if self._graphs[0].name == "preprocessed.onnx" else "unfused",
            "keptFloat32ForValidity": sorted({*self._forced[False], *self._forced[True]}),
        }

    def quantize_checked(self, path: Path, config: Int8Config, context: PassContext) -> Int8Config:
        """Quantize as ``config`` says and make sure ONNX Runtime loads the result.

        ORT's quantizer sometimes writes a graph ORT itself rejects (e.g. QDQ on BatchNorm-fused
        convolutions of an old-opset graph). Each time: first fall back from the pre-processed to the
        unfused graph; then keep the node named in the load error in float32. Recoveries persist for
        later trials. Returns the configuration actually used (with any node kept for validity).
        """
        import onnx

        for _ in range(MAX_RECOVERIES + 1):
            graph = self._graphs[0]
            forced = self._forced[config.per_channel]
            used = replace(config, exclude=tuple(dict.fromkeys((*config.exclude, *forced))))
            try:
                self.quantize(graph, path, used, context)
                problem = load_problem(path)
            except BadInputError:
                raise
            except Exception as exc:  # the quantizer itself failed on this graph
                problem = f"ONNX Runtime's quantizer failed: {_first_line(exc)}"
            if problem is None:
                return used
            path.unlink(missing_ok=True)
            if len(self._graphs) > 1:
                self._graphs.pop(0)
                self._recovery.append(
                    f"pre-processed graph gave an invalid model ({problem}); used the unfused graph"
                )
                self.prepare(self._graphs[0], context)  # calibration ranges belong to the old graph's tensors
                continue
            culprits = [
                n
                for n in offending_nodes(problem, onnx.load(str(graph), load_external_data=False))
                if n not in used.exclude
            ]
            if not culprits:
                raise UnsupportedModelError(
                    str(graph),
                    f"ONNX Runtime's quantizer made a model it cannot load ({problem}) and the error names "
                    "no node that could stay float32",
                )
            weights = weight_nodes(onnx.load(str(graph), load_external_data=False))
            if not set(weights) - set(used.exclude) - set(culprits):
                raise UnsupportedModelError(
                    str(graph),
                    f"ONNX Runtime's quantizer made a model it cannot load ({problem}); keeping "
                    f"{culprits} in float32 would leave no node quantized",
                )
            forced.extend(culprits)
            self._recovery.append(f"kept {culprits} in float32: quantized it was invalid ({problem})")
        raise UnsupportedModelError(
            str(self._graphs[0]),
            f"ONNX Runtime's quantizer still made an invalid model after keeping {forced} in float32",
        )

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
        best = Int8Config(
            best_cfg["perChannel"], best_cfg["reduceRange"], user_exclude, bool(best_cfg.get("weightOpsOnly"))
        )
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

    def extra_rungs(self, ladder: list[Int8Config]) -> list[Int8Config]:
        """Activation quantization of non-weight ops (Add, Mul, ReduceSum of a hand-written layer
        norm: magika) can ruin accuracy where no weight node is to blame: quantize weight ops only."""
        return [replace(ladder[-1], per_channel=True, weight_ops_only=True)]

    def prepare(self, source: Path, context: PassContext) -> None:
        self._cache = (context.work_dir / "calibration-cache.json").resolve()
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
        # ORT 1.32's quantize_static leaves a <uuid>.data copy of the weights in the current directory
        # (its model_input copy is saved with external data); run it from the step's work directory.
        with contextlib.chdir(context.work_dir.resolve()):
            quantize_static(
                str(source.resolve()),
                str(destination.resolve()),
                reader,  # duck-typed CalibrationDataReader
                quant_format=QuantFormat.QDQ,
                per_channel=config.per_channel,
                reduce_range=config.reduce_range,
                activation_type=types[self.params.activationType],
                weight_type=types[self.params.weightType],
                nodes_to_exclude=list(config.exclude),
                op_types_to_quantize=sorted(WEIGHT_OPS - {"LSTM", "Attention"})
                if config.weight_ops_only
                else None,
                calibrate_method=methods[self.params.calibrationMethod],
                calibration_cache_path=str(self._cache),
            )

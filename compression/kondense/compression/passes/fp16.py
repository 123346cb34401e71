"""Float16 conversion with onnxconverter-common, float32 inputs/outputs kept by default so callers do
not change, and automatic mixed precision so a broken model is never shipped as a success.

Without a budget the whole graph is converted (op types in ``opBlockList`` and the converter's
default block list stay float32), except nodes that read a weight float16 conversion would clamp
(|w| > 1e4): those always stay float32, their weights too. A converted model ONNX Runtime rejects
is repaired (the node named in the error stays float32) or refused, never written. With a budget (``maxAccuracyDelta``) the full conversion is
measured first; if it misses the budget, nodes stay float32 by measured sensitivity:

1. on a few evaluation samples, every float tensor of the float32 model is compared with the same
   tensor of the float16 model; a node's sensitivity is how much relative error it *adds* (its
   output's error minus its inputs' worst error), so the node that breaks float16 ranks first, not
   everything downstream of it; nodes that read or write a value outside float16's range
   (|x| > 65504 in the float32 model) or read a weight the converter clamps (|w| > 1e4) rank above
   all; initializers read only by float32 nodes keep their float32 values;
2. the top 1, 2, 4, … nodes are kept float32 until the end-to-end accuracy delta is within budget.

Every configuration is recorded as a trial; if none meets the budget the most accurate is kept and
the gate fails (the pipeline says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from kondense.api.artifacts import Trial
from kondense.api.techniques import Fp16Params, Technique
from kondense.compression.errors import UnsupportedModelError
from kondense.compression.passes import Pass, PassContext, PassResult, register

FP16_MAX = 65504.0
CONVERTER_MAX = 1e4  # onnxconverter-common's max_finite_val: larger float16 weights are clamped
SENSITIVITY_SAMPLES = 8
MAX_AMP_TRIALS = 8  # keeps 1, 2, 4, ... 128 nodes in float32 at most
MAX_REPAIRS = 8  # nodes kept float32 so that ONNX Runtime loads the converted model


def align_cast_targets(model: Any) -> int:
    """Make ``Cast(to=float)`` nodes agree with the float16 type the converter gave their output.

    onnxconverter-common >= 1.15 retypes such outputs to float16 but leaves ``to=FLOAT``, which ONNX
    Runtime rejects at load time (onnxconverter-common issue #320); 1.14 rewrote the attribute.
    Returns the number of nodes fixed.
    """
    from onnx import TensorProto

    fp16_values = {
        v.name
        for v in [*model.graph.value_info, *model.graph.output]
        if v.type.tensor_type.elem_type == TensorProto.FLOAT16
    }
    fixed = 0
    for node in model.graph.node:
        if node.op_type == "Cast" and node.output[0] in fp16_values:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
                    fixed += 1
    return fixed


def restore_float32_initializers(converted: Any, original: Any) -> int:
    """Put back the float32 values of initializers that only float32 nodes read.

    onnxconverter-common converts every float initializer to float16 (clamping to ±1e4) and casts it
    back for nodes kept in float32: a BatchNormalization running variance of 1e8 (paddle's text
    detector) is destroyed although the node was kept float32. Where every consumer of a converted
    initializer is such a ``Cast(to=float)``, the initializer gets its float32 values back (the
    Cast becomes float->float, a no-op). Returns how many were restored.
    """
    from onnx import TensorProto

    originals = {t.name: t for t in original.graph.initializer if t.data_type == TensorProto.FLOAT}
    consumers: dict[str, list[Any]] = {}
    for node in converted.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def casts_to_float(node: Any) -> bool:
        return node.op_type == "Cast" and any(
            a.name == "to" and a.i == TensorProto.FLOAT for a in node.attribute
        )

    restored: set[str] = set()
    for index, tensor in enumerate(converted.graph.initializer):
        users = consumers.get(tensor.name, [])
        if (
            tensor.data_type == TensorProto.FLOAT16
            and tensor.name in originals
            and users
            and all(map(casts_to_float, users))
        ):
            converted.graph.initializer[index].CopyFrom(originals[tensor.name])
            restored.add(tensor.name)
    if restored:
        kept = [v for v in converted.graph.value_info if v.name not in restored]
        del converted.graph.value_info[:]
        converted.graph.value_info.extend(kept)
    return len(restored)


def _convert_once(
    model: Any, keep_io_types: bool, op_block_list: list[str], node_block_list: list[str]
) -> tuple[Any, int]:
    import onnx
    from onnxconverter_common import float16

    converted = onnx.ModelProto()
    converted.CopyFrom(model)  # the converter works in place; ``model`` serves every trial
    # value_info re-declaring a graph input/output makes the converter retype it behind keep_io_types
    boundary = {v.name for v in [*converted.graph.input, *converted.graph.output]}
    inner = [v for v in converted.graph.value_info if v.name not in boundary]
    del converted.graph.value_info[:]
    converted.graph.value_info.extend(inner)
    converted = float16.convert_float_to_float16(
        converted,
        keep_io_types=keep_io_types,
        op_block_list=op_block_list,
        node_block_list=node_block_list or None,
    )
    restore_float32_initializers(converted, model)
    return converted, align_cast_targets(converted)


def convert(
    model: Any,
    keep_io_types: bool,
    op_block_list: list[str],
    node_block_list: list[str],
    repaired: list[str] | None = None,
) -> tuple[Any, int]:
    """A float16 copy of ``model`` that ONNX Runtime loads, and the number of Cast nodes aligned.

    onnxconverter-common sometimes writes a graph ORT rejects (a node bound to float and float16 at
    once, e.g. on skl2onnx graphs). The result is loaded; a node named in the load error is kept
    float32 (appended to ``repaired``) and the conversion redone; if none can be named, one sentence.
    """
    from kondense.compression.passes.quantize import offending_nodes

    blocked = list(node_block_list)
    repaired = repaired if repaired is not None else []
    for _ in range(MAX_REPAIRS + 1):
        try:
            converted, casts = _convert_once(model, keep_io_types, op_block_list, blocked)
        except Exception as exc:  # the converter's own consistency checks (ValueError, KeyError...)
            raise UnsupportedModelError(
                "fp16",
                f"onnxconverter-common cannot convert this graph with {len(blocked)} node(s) kept float32 "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})",
            ) from exc
        problem = _load_problem(converted)
        if problem is None:
            return converted, casts
        culprits = [n for n in offending_nodes(problem, model) if n not in blocked]
        if not culprits:
            break
        blocked += culprits
        repaired += culprits
    raise UnsupportedModelError(
        "fp16",
        f"the float16 conversion makes a model ONNX Runtime cannot load ({problem}) and no node to keep float32 is named",
    )


def _load_problem(model: Any) -> str | None:
    import onnxruntime as ort

    from kondense.compression.intake import ort_reason

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's own exception types; its reason without the C++ signature
        return ort_reason(exc, 400)
    return None


def _with_outputs(model: Any, names: list[str]) -> bytes:
    """Serialized copy of ``model`` that also outputs the named tensors (types from value_info)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    infos = {v.name: v for v in copy.graph.value_info}
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(infos[n] for n in names if n in infos and n not in present)
    return copy.SerializeToString()


def _float_tensors(model: Any) -> list[str]:
    """Main-graph node outputs that are float32 in the float32 model (after ONNX shape inference)."""
    from onnx import TensorProto

    infos = {v.name: v for v in model.graph.value_info}
    return [
        name
        for node in model.graph.node
        for name in node.output
        if name in infos and infos[name].type.tensor_type.elem_type == TensorProto.FLOAT
    ]


def node_sensitivity(
    model32: Any, model16: Any, feeds: list[dict[str, np.ndarray]]
) -> list[tuple[float, str]]:
    """(score, node name) from most to least sensitive, measured on ``feeds`` (see module doc)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    inferred32 = onnx.shape_inference.infer_shapes(model32, strict_mode=False)
    names = _float_tensors(inferred32)
    infos16 = {v.name for v in model16.graph.value_info}
    shared = [n for n in names if n in infos16]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    s32 = ort.InferenceSession(_with_outputs(inferred32, shared), options, providers=["CPUExecutionProvider"])
    s16 = ort.InferenceSession(_with_outputs(model16, shared), options, providers=["CPUExecutionProvider"])
    errors: dict[str, list[float]] = {n: [] for n in shared}
    peaks: dict[str, float] = dict.fromkeys(shared, 0.0)
    for feed in feeds:
        a_all = dict(zip(shared, s32.run(shared, feed), strict=True))
        b_all = dict(zip(shared, s16.run(shared, feed), strict=True))
        for name in shared:
            a, b = np.asarray(a_all[name], np.float64), np.asarray(b_all[name], np.float64)
            if a.shape != b.shape or not a.size:
                continue
            peaks[name] = max(peaks[name], float(np.abs(a).max()))
            scale = float(np.abs(a).mean()) or 1.0
            diff = np.abs(a - b)
            errors[name].append(float(diff.mean()) / scale if np.isfinite(diff).all() else float("inf"))
    error = {n: float(np.mean(v)) for n, v in errors.items() if v}
    weight_peaks = {
        t.name: float(np.abs(numpy_helper.to_array(t)).max())
        for t in model32.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and t.dims and int(np.prod(t.dims)) > 0
    }
    scores: list[tuple[float, str]] = []
    for node in model32.graph.node:
        outs = [error[o] for o in node.output if o in error]
        if not outs or not node.name:
            continue
        ins = [error.get(i, 0.0) for i in node.input if i]
        added = max(outs) - (max(ins) if ins else 0.0)
        # reading or writing a value float16 cannot hold (weights are clamped at ±1e4 by the converter)
        overflow = any(peaks.get(t, 0.0) > FP16_MAX for t in [*node.input, *node.output]) or any(
            weight_peaks.get(t, 0.0) > CONVERTER_MAX for t in node.input
        )
        scores.append((float("inf") if overflow or not np.isfinite(added) else added, node.name))
    scores.sort(key=lambda s: s[0], reverse=True)
    return [s for s in scores if s[0] > 0]


def float32_weight_values(model: Any, *, subgraphs: bool = True) -> int:
    """float32 values the model stores (initializers and Constant nodes; with ``subgraphs``, those of
    If/Loop/Scan bodies too): what float16 would halve."""
    from onnx import AttributeProto, TensorProto

    def stored(graph: Any) -> int:
        total = sum(int(np.prod(t.dims)) for t in graph.initializer if t.data_type == TensorProto.FLOAT)
        for node in graph.node:
            for attr in node.attribute:
                if node.op_type == "Constant" and attr.type == AttributeProto.TENSOR:
                    total += int(np.prod(attr.t.dims)) if attr.t.data_type == TensorProto.FLOAT else 0
                if subgraphs:
                    for body in [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs):
                        total += stored(body)
        return total

    return stored(model.graph)


def _not_smaller_reason(model: Any, converted: Any) -> str:
    """Why a float16 conversion is not smaller than ``model``, in one sentence."""
    total, left = float32_weight_values(model), float32_weight_values(converted)
    sizes = f"({converted.ByteSize()} vs {model.ByteSize()} bytes)"
    if 2 * left <= total:
        return (
            f"float16 does not make this model smaller {sizes}: its {total} float32 weight value(s) save "
            "less than the Cast nodes float16 needs cost"
        )
    inside = total - float32_weight_values(model, subgraphs=False)
    why = (
        f"{inside} of them sit inside If/Loop/Scan subgraphs, which the converter (onnxconverter-common) "
        "leaves float32"
        if 2 * inside > total
        else "the converter keeps them float32 (ops blocked for float16, or values outside its range)"
    )
    return f"float16 does not make this model smaller {sizes}: {left} of its {total} float32 weight values stay float32 ({why})"


def clamped_weight_nodes(model: Any) -> list[str]:
    """Nodes reading a float weight the converter would clamp (|w| > 1e4, e.g. a BatchNormalization
    running variance of 1e8): float16 would change the weight itself, so they always stay float32."""
    from onnx import TensorProto, numpy_helper

    clamped = {
        t.name
        for t in model.graph.initializer
        if t.data_type == TensorProto.FLOAT
        and int(np.prod(t.dims)) > 0
        and float(np.abs(numpy_helper.to_array(t)).max()) > CONVERTER_MAX
    }
    return [n.name for n in model.graph.node if n.name and clamped & set(n.input)]


@register
class Fp16Pass(Pass):
    technique: ClassVar[Technique] = Technique.FP16
    params: Fp16Params

    def run(self, source: Path, destination: Path, context: PassContext) -> PassResult:
        import onnx
        from onnxconverter_common import float16

        model = onnx.load(str(source))
        if not float32_weight_values(model):
            raise UnsupportedModelError(
                str(source),
                "no float32 weight to convert: the model stores no float32 initializer or constant, so "
                "float16 would only add Cast nodes (a larger model, not a smaller one)",
            )
        block_list = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(self.params.opBlockList))
        keep_io = self.params.keepIoTypes
        context.progress.start("fp16: converting", total=None)
        out_of_range = clamped_weight_nodes(model)
        repaired: list[str] = []
        converted, casts = convert(model, keep_io, block_list, out_of_range, repaired)
        context.progress.finish()
        if converted.ByteSize() >= model.ByteSize():  # keeping nodes float32 later only adds bytes
            raise UnsupportedModelError(str(source), _not_smaller_reason(model, converted))
        always = [*out_of_range, *repaired]  # kept float32 in every configuration
        details: dict[str, Any] = {"keepIoTypes": keep_io, "castsAligned": casts}
        if out_of_range:
            details["keptFloat32ForRange"] = out_of_range
        if repaired:
            details["keptFloat32ForValidity"] = repaired
        blocked = sum(1 for node in model.graph.node if node.op_type in block_list)
        budget = context.max_accuracy_delta
        if budget is None:
            onnx.save(converted, str(destination))
            return PassResult({**details, "opsKeptInFloat32": blocked, "mixedPrecision": False})

        trials: list[Trial] = []
        candidates: list[tuple[Path, list[str]]] = []

        def attempt(variant: Any, kept_nodes: list[str], note: str) -> float:
            path = context.work_dir / f"fp16-trial-{len(trials)}.onnx"
            onnx.save(variant, str(path))
            delta = context.reference.accuracy_of(path, threads=context.threads).delta
            delta = delta if np.isfinite(delta) else float("inf")  # inf/NaN outputs: broken, never chosen
            trials.append(
                Trial(
                    config={"keepIoTypes": keep_io, "nodesKeptFloat32": list(kept_nodes)},
                    accuracyDelta=delta,
                    sizeRatio=context.reference.size_ratio_of(path),
                    withinBudget=delta <= budget,
                    message=note,
                    evalSamples=len(context.reference.dataset),
                )
            )
            candidates.append((path, kept_nodes))
            return delta

        delta = attempt(converted, [], "all float nodes in float16")
        if delta > budget:
            context.progress.start("fp16: measuring node sensitivity", total=None)
            feeds = list(context.reference.dataset.take(SENSITIVITY_SAMPLES).batches(1))
            try:
                ranked = [name for _, name in node_sensitivity(model, converted, feeds) if name not in always]
            except Exception as exc:  # e.g. tensors ORT cannot expose as outputs
                ranked = []
                details["sensitivityNote"] = (
                    f"not measured: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                )
            context.progress.finish()
            details["sensitiveNodes"] = ranked[:16]
            count = 1
            context.progress.start("fp16: keeping sensitive nodes in float32", total=None)
            for _ in range(MAX_AMP_TRIALS):
                if not ranked:
                    break
                kept = ranked[: min(count, len(ranked))]
                variant, _ = convert(model, keep_io, block_list, [*kept, *always])
                delta = attempt(variant, kept, f"float32: {len(kept)} most sensitive node(s)")
                if delta <= budget or count >= len(ranked):
                    break
                count *= 2
            context.progress.finish()
        within = [i for i, t in enumerate(trials) if t.withinBudget]
        chosen = (
            within[0] if within else min(range(len(trials)), key=lambda i: trials[i].accuracyDelta or 0.0)
        )
        trials[chosen].selected = True  # type: ignore[attr-defined]  # extra field, allowed by the model
        path, kept_nodes = candidates[chosen]
        path.replace(destination)
        for other, _ in candidates:
            other.unlink(missing_ok=True)
        details.update(
            {
                "mixedPrecision": bool(kept_nodes),
                "nodesKeptFloat32": kept_nodes,
                "opsKeptInFloat32": blocked + len(kept_nodes),
            }
        )
        return PassResult(details, trials, bool(within))

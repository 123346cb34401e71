"""Weight-only block quantization for transformers with ONNX Runtime's ``MatMulNBits``.

MatMul weights (float initializers) become ``com.microsoft.MatMulNBits``: 4 or 8 bits per weight, one
scale (and, asymmetric, one zero point) per ``blockSize`` weights along K; activations stay float
(``accuracyLevel`` 4 lets ORT quantize them to int8 inside the kernel). ORT's
``MatMulNBitsQuantizer`` does the MatMuls. Embedding tables (``Gather`` over a float initializer,
half of MiniLM's weights) become ``com.microsoft.GatherBlockQuantized``: int4 through the same
quantizer, int8 written here (ORT's quantizer refuses 8-bit Gather; the op accepts ``uint8`` data with
``bits=8``).

int4 embeddings need opset 21 (the int4 tensor type). ORT's quantizer only *sets* the opset import to
21 without converting the graph (the forced upgrade came with Gather support, microsoft/onnxruntime#21697), so a ``ReduceL2``/``ReduceMean`` exported at opset < 18 keeps its
``axes`` attribute, which opset 18 moved to an input: the model is invalid. ``upgrade_opset_for_int4``
converts those nodes first (attribute -> constant input), so the quantizer's bump is a no-op. The
upstream fix that would remove this: ``MatMulNBitsQuantizer.process`` converting with
``onnx.version_converter`` instead of ``set_opset_import(..., 21)``, or writing 4-bit Gather data as
``uint8`` with ``bits=4`` (which the op accepts and which needs no opset bump).

Tuning (``tune`` on and a budget known): the first trial is the configuration as asked. If it misses
the budget, each 4-bit node's sensitivity is measured as the int8 tuner measures it
(``quantize.node_sensitivity``: one float run over a subset of the evaluation data, then each node
alone with its weight rounded to 4-bit and to 8-bit blocks), and nodes are moved to 8 bits in order of
output noise removed per byte added; the smallest count that meets the budget is found by doubling
then bisecting, each count measured on the full set. Every trial is recorded. If none meets the
budget, the most accurate full-set trial is kept and the result says so.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from kondense.api.artifacts import Trial
from kondense.api.techniques import Technique, WeightOnlyParams
from kondense.compression.errors import BadInputError, UnsupportedModelError
from kondense.compression.evaluation import Reference
from kondense.compression.intake import default_opset, name_unnamed_nodes
from kondense.compression.passes import Pass, PassContext, PassResult, register
from kondense.compression.passes.quantize import most_accurate_full_trial, node_sensitivity

MS_DOMAIN = "com.microsoft"
INT4_OPSET = 21
INT4_IR_VERSION = 10
# Reduce ops whose ``axes`` moved from an attribute to an optional input in opset 18.
REDUCE_AXES_INPUT_SINCE_18 = frozenset(
    {
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSumSquare",
    }
)
# Ops whose meaning changed between opset 13 and 21 in a way a plain opset bump cannot keep.
NOT_BUMPABLE = frozenset({"GroupNormalization"})
SENSITIVITY_SAMPLES = 64  # samples of the float run that measures each node's rounding noise


@dataclass(frozen=True)
class WeightNodes:
    matmuls: tuple[str, ...]  # MatMul nodes with a 2-D float initializer as input B
    gathers: tuple[str, ...]  # Gather nodes over a 2-D float initializer table (axis 0)
    skipped: dict[str, str] = field(default_factory=dict)  # node -> why it stays float


def _float_initializers(model: Any) -> dict[str, Any]:
    from onnx import TensorProto

    return {i.name: i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT}


def weight_nodes(model: Any, block_size: int) -> WeightNodes:
    """The MatMuls and embedding Gathers of the main graph that weight-only quantization can take."""
    floats = _float_initializers(model)
    matmuls, gathers, skipped = [], [], {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in floats:
            dims = list(floats[node.input[1]].dims)
            if len(dims) == 2:
                matmuls.append(node.name)
            else:
                skipped[node.name] = f"weight of rank {len(dims)}"
        elif node.op_type == "Gather" and node.input[0] in floats:
            dims = list(floats[node.input[0]].dims)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if len(dims) != 2 or axis not in (0, -2):
                skipped[node.name] = "not a 2-D table gathered along axis 0"
            elif dims[1] < block_size:
                skipped[node.name] = f"table rows of {dims[1]} values, fewer than blockSize {block_size}"
            elif dims[1] % 2:
                skipped[node.name] = f"table rows of an odd {dims[1]} values"
            else:
                gathers.append(node.name)
    return WeightNodes(tuple(matmuls), tuple(gathers), skipped)


def nothing_to_quantize(nodes: WeightNodes, embeddings: str, block_size: int) -> str:
    """One sentence: why weight-only finds no node to take (naming the nodes it had to skip)."""
    wanted = "MatMul with a 2-D float weight" + (
        " or Gather over a 2-D float table (embedding)" if embeddings != "none" else ""
    )
    skipped = [
        (n, why) for n, why in nodes.skipped.items() if embeddings != "none" or why.startswith("weight")
    ]
    if nodes.gathers and embeddings == "none":
        skipped.append((nodes.gathers[0], "an embedding, and params.embeddings is 'none'"))
    if not skipped:
        return f"nothing to quantize: no {wanted} (weight-only applies to transformer-like graphs)"
    shown = "; ".join(f"{name}: {why}" for name, why in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
    return (
        f"nothing to quantize: weight-only takes a {wanted}, and the {len(skipped)} such node(s) found "
        f"cannot be blocked ({shown}); try dynamic-int8 or fp16"
    )


def _graphs(graph: Any) -> Iterator[Any]:
    """A graph and all its subgraphs (If/Loop/Scan bodies), depth first."""
    from onnx import AttributeProto

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def upgrade_opset_for_int4(model: Any) -> list[str]:
    """Make ``model`` a valid opset-21 / IR-10 model in place, as int4 tensors need; returns notes.

    Only ops whose signature changed between opset 13 and 21 need rewriting: the Reduce family took
    ``axes`` as an input in opset 18. Their ``axes`` attribute becomes an int64 initializer input.
    Older opsets (< 13) changed many more ops and are refused: run them through an opset upgrade first.
    """
    from onnx import AttributeProto, numpy_helper

    opset = default_opset(model)
    if opset >= INT4_OPSET:
        return []
    if opset < 13:
        raise UnsupportedModelError(
            "model",
            f"int4 embeddings need opset {INT4_OPSET}; upgrading from opset {opset} (< 13) is not supported "
            "here: use embeddings: int8 (no opset change) or upgrade the model's opset first",
        )
    notes: list[str] = []
    used = {i.name for i in model.graph.initializer}
    rewritten = 0
    for graph in _graphs(model.graph):
        for node in graph.node:
            if node.op_type in NOT_BUMPABLE and node.domain in ("", "ai.onnx"):
                raise UnsupportedModelError(
                    node.name or node.op_type,
                    f"{node.op_type} changed meaning between opset {opset} and {INT4_OPSET}; "
                    "use embeddings: int8 (no opset change)",
                )
            if node.op_type not in REDUCE_AXES_INPUT_SINCE_18 or node.domain not in ("", "ai.onnx"):
                continue
            if opset >= 18:
                continue
            axes = next((a for a in node.attribute if a.name == "axes"), None)
            if axes is None:
                continue
            values = list(axes.ints) if axes.type == AttributeProto.INTS else [axes.i]
            name = f"{node.name or node.op_type}_axes"
            while name in used:
                name += "_"
            used.add(name)
            graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
            node.attribute.remove(axes)
            node.input.append(name)
            rewritten += 1
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = INT4_OPSET
    if model.ir_version < INT4_IR_VERSION:
        model.ir_version = INT4_IR_VERSION
    notes.append(f"opset {opset} -> {INT4_OPSET} for int4 tensors")
    if rewritten:
        notes.append(f"{rewritten} Reduce node(s): axes attribute -> input (opset 18 signature)")
    return notes


def _blocks(matrix: np.ndarray, block_size: int) -> np.ndarray:
    """``matrix`` [rows, cols] as [rows, blocks, block_size] along its last axis, zero-padded."""
    rows, cols = matrix.shape
    blocks = -(-cols // block_size)
    padded = np.zeros((rows, blocks * block_size), dtype=np.float32)
    padded[:, :cols] = matrix
    return padded.reshape(rows, blocks, block_size)


def quantize_gather_int8(model: Any, node_names: set[str], block_size: int, symmetric: bool) -> int:
    """Replace the named Gathers' float tables by 8-bit ``GatherBlockQuantized`` (uint8 data, bits=8).

    Blocks run along the row (axis 1); asymmetric blocks store a uint8 zero point, symmetric ones use
    the op's default zero point 128. Returns the number of nodes replaced.
    """
    from onnx import helper, numpy_helper

    tables = {i.name: i for i in model.graph.initializer}
    replaced = 0
    new_nodes = []
    dropped: set[str] = set()
    for node in model.graph.node:
        if node.name not in node_names:
            new_nodes.append(node)
            continue
        table = numpy_helper.to_array(tables[node.input[0]]).astype(np.float32)
        rows, cols = table.shape
        view = _blocks(table, block_size)
        if symmetric:
            absmax = np.abs(view).max(axis=2)
            scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
            q = np.clip(np.round(view / scale[..., None]), -127, 127) + 128
            zero = None
        else:
            lo = np.minimum(view.min(axis=2), 0.0)
            hi = np.maximum(view.max(axis=2), 0.0)
            scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0).astype(np.float32)
            zero = np.clip(np.round(-lo / scale), 0, 255).astype(np.uint8)
            q = np.clip(np.round(view / scale[..., None]) + zero[..., None], 0, 255)
        data = q.reshape(rows, -1)[:, :cols].astype(np.uint8)
        base = node.input[0]
        inits = [
            numpy_helper.from_array(data, f"{base}_q8"),
            numpy_helper.from_array(scale, f"{base}_q8_scales"),
        ]
        inputs = [inits[0].name, node.input[1], inits[1].name]
        if zero is not None:
            inits.append(numpy_helper.from_array(zero, f"{base}_q8_zero_points"))
            inputs.append(inits[2].name)
        model.graph.initializer.extend(inits)
        dropped.add(base)
        new_nodes.append(
            helper.make_node(
                "GatherBlockQuantized",
                inputs,
                list(node.output),
                name=f"{node.name}_Q8",
                domain=MS_DOMAIN,
                bits=8,
                block_size=block_size,
                gather_axis=0,
                quantize_axis=1,
            )
        )
        replaced += 1
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    still_used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name not in dropped or i.name in still_used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    if replaced and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return replaced


@dataclass(frozen=True)
class WeightOnlyConfig:
    """One point of the tuning space: which nodes get 8 bits, which stay float."""

    bits: int
    block_size: int
    symmetric: bool
    accuracy_level: int
    embeddings: str  # none | int8 | int4
    eight_bit: tuple[str, ...] = ()  # nodes raised to 8 bits (MatMuls, or Gathers when embeddings=int4)
    exclude: tuple[str, ...] = ()  # nodes kept in float32

    def as_dict(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "blockSize": self.block_size,
            "symmetric": self.symmetric,
            "accuracyLevel": self.accuracy_level,
            "embeddings": self.embeddings,
            "eightBitNodes": list(self.eight_bit),
            "nodesToExclude": list(self.exclude),
        }


@contextmanager
def _quiet_ort_quantizer() -> Iterator[None]:
    """ORT's quantizer logs one INFO line per node; keep the Job log readable (public logging API)."""
    logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _run_nbits(
    model: Any, config: WeightOnlyConfig, bits: int, op_types: tuple[str, ...], exclude: list[str]
) -> Any:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=config.block_size,
        is_symmetric=config.symmetric,
        accuracy_level=config.accuracy_level or None,
        nodes_to_exclude=exclude,
        op_types_to_quantize=op_types,
    )
    quantizer.process()
    return quantizer.model.model


def quantize_weight_only(
    source_model: Any, nodes: WeightNodes, config: WeightOnlyConfig
) -> tuple[Any, list[str]]:
    """A quantized copy of ``source_model`` (left untouched) as ``config`` says, and notes."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(source_model)
    notes: list[str] = []
    excluded = set(config.exclude)
    eight = set(config.eight_bit)
    gathers = [g for g in nodes.gathers if g not in excluded] if config.embeddings != "none" else []
    all_gathers = set(nodes.gathers)
    int4_gathers = [g for g in gathers if config.embeddings == "int4" and g not in eight]
    int8_gathers = [g for g in gathers if g not in int4_gathers]
    matmuls_low = [m for m in nodes.matmuls if m not in excluded and m not in eight]
    matmuls_8 = [m for m in nodes.matmuls if m not in excluded and (m in eight or config.bits == 8)]
    if config.bits == 8:
        matmuls_low = []
    # ORT's quantizer takes every MatMul/Gather with a constant input; keep it to the nodes chosen here
    # (a Gather over a constant shape vector, a MatMul this module skipped, stays as it is).
    others = {
        n.name
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gather") and n.name not in set(nodes.matmuls) | all_gathers
    }
    with _quiet_ort_quantizer():
        if int4_gathers:
            notes += upgrade_opset_for_int4(model)
        first_ops = ("MatMul", "Gather") if int4_gathers else ("MatMul",)
        first_exclude = sorted(excluded | others | set(matmuls_8) | (all_gathers - set(int4_gathers)))
        if matmuls_low or int4_gathers:
            model = _run_nbits(model, config, 4, first_ops, first_exclude)
        if matmuls_8:
            # MatMuls quantized above are MatMulNBits now; only those still MatMul are candidates.
            model = _run_nbits(model, config, 8, ("MatMul",), sorted(excluded | others))
    if int8_gathers:
        quantize_gather_int8(model, set(int8_gathers), config.block_size, config.symmetric)
    return model, notes


def save_model(model: Any, path: Path) -> None:
    import onnx

    onnx.save(model, str(path))


def rank_for_eight_bits(scored: list[tuple[float, float, str]]) -> list[str]:
    """Order nodes for raising to 8 bits: accuracy gained per byte added first (the greedy knapsack
    order, so the budget is met with the smallest file), then nodes that gained nothing measurable.

    ``scored`` holds (gain in accuracy delta, added size as a fraction of the base, node name).
    """
    helpful = [s for s in scored if s[0] > 0]
    rest = [s for s in scored if s[0] <= 0]
    helpful.sort(key=lambda s: (-s[0] / max(s[1], 1e-9), s[2]))
    rest.sort(key=lambda s: (-s[0], s[1], s[2]))
    return [node for _, _, node in helpful + rest]


def block_round_trip(bits: int, block_size: int, symmetric: bool) -> Callable[[Any, int, Any], Any]:
    """A weight rounding for ``node_sensitivity``: ``bits``-bit blocks of ``block_size`` along the
    axis weight-only quantizes (a MatMul weight [K, N] along K, an embedding table along its rows),
    one scale (and, asymmetric, a zero point) per block, as MatMulNBits / GatherBlockQuantized store it."""

    def round_trip(node: Any, index: int, weight: Any) -> Any:
        w = np.asarray(weight, dtype=np.float32)
        if w.ndim != 2:
            return w
        view = w.T if node.op_type == "MatMul" else w  # blocks along the last axis of ``view``
        rows, cols = view.shape
        grouped = _blocks(view, block_size)
        if symmetric:
            levels = float(2 ** (bits - 1) - 1)
            scale = np.abs(grouped).max(axis=2, keepdims=True) / levels
            scale = np.where(scale > 0, scale, 1.0)
            rounded = np.clip(np.round(grouped / scale), -levels - 1, levels) * scale
        else:
            levels = float(2**bits - 1)
            low = np.minimum(grouped.min(axis=2, keepdims=True), 0.0)
            high = np.maximum(grouped.max(axis=2, keepdims=True), 0.0)
            scale = np.where(high > low, (high - low) / levels, 1.0)
            zero = np.clip(np.round(-low / scale), 0, levels)
            rounded = (np.clip(np.round(grouped / scale) + zero, 0, levels) - zero) * scale
        out = rounded.reshape(rows, -1)[:, :cols].astype(np.float32)
        return out.T.copy() if node.op_type == "MatMul" else out

    return round_trip


def weight_elements(model: Any, node_names: list[str]) -> dict[str, int]:
    """Elements of the float weight each node reads (a MatMul's B, a Gather's table)."""
    floats = _float_initializers(model)
    wanted = set(node_names)
    found: dict[str, int] = {}
    for node in model.graph.node:
        if node.name in wanted:
            weight = node.input[1] if node.op_type == "MatMul" else node.input[0]
            if weight in floats:
                found[node.name] = math.prod(floats[weight].dims)
    return found


@register
class WeightOnlyPass(Pass):
    technique: ClassVar[Technique] = Technique.WEIGHT_ONLY
    params: WeightOnlyParams

    def run(self, source: Path, destination: Path, context: PassContext) -> PassResult:
        import onnx

        p = self.params
        model = onnx.load(str(source))
        named = name_unnamed_nodes(model, infix="_kondense")  # ORT's quantizer selects by name
        nodes = weight_nodes(model, p.blockSize)
        unknown = sorted(set(p.nodesToExclude) - {n.name for n in model.graph.node})
        if unknown:
            raise BadInputError("params.nodesToExclude", f"no such node(s) in the model: {unknown[:10]}")
        if not nodes.matmuls and not (p.embeddings != "none" and nodes.gathers):
            raise UnsupportedModelError(str(source), nothing_to_quantize(nodes, p.embeddings, p.blockSize))
        base_config = WeightOnlyConfig(
            p.bits, p.blockSize, p.symmetric, p.accuracyLevel, p.embeddings, (), tuple(p.nodesToExclude)
        )
        budget = context.max_accuracy_delta
        trials: list[Trial] = []
        files: list[Path] = []
        notes: set[str] = set()
        counter = iter(range(100_000))

        def attempt(config: WeightOnlyConfig, reference: Reference, note: str | None = None) -> float:
            path = context.work_dir / f"trial-{next(counter)}.onnx"
            quantized, made = quantize_weight_only(model, nodes, config)
            notes.update(made)
            save_model(quantized, path)
            accuracy = reference.accuracy_of(path, threads=context.threads)
            trials.append(
                Trial(
                    config=config.as_dict(),
                    accuracyDelta=accuracy.delta,
                    sizeRatio=context.reference.size_ratio_of(path),
                    withinBudget=budget is None or accuracy.delta <= budget,
                    message=note,
                    evalSamples=len(reference.dataset),
                )
            )
            files.append(path)
            return accuracy.delta

        details: dict[str, Any] = {
            "matmuls": len(nodes.matmuls),
            "embeddingTables": len(nodes.gathers) if p.embeddings != "none" else 0,
            "namedNodes": named,
        }
        if nodes.skipped:
            details["skipped"] = dict(list(nodes.skipped.items())[:20])

        context.progress.start("weight-only: quantizing", total=1)
        first = attempt(base_config, context.reference, "as configured")
        context.progress.finish()
        chosen: int | None = 0
        within: bool | None = None
        self._sensitivity: dict[str, float] = {}
        if p.tune and budget is not None:
            within = first <= budget
            if not within:
                chosen = self._raise_sensitive(attempt, trials, model, nodes, base_config, context)
                within = chosen is not None
                if chosen is None:
                    chosen = most_accurate_full_trial(trials, len(context.reference.dataset))
        assert chosen is not None
        trials[chosen].selected = True  # type: ignore[attr-defined]  # extra field, allowed by the model
        shutil.move(files[chosen], destination)
        for path in files:
            path.unlink(missing_ok=True)
        selected = trials[chosen].config
        details.update(
            {
                "tuned": bool(p.tune and budget is not None),
                "selectedConfig": selected,
                "eightBitNodes": len(selected["eightBitNodes"]),
            }
        )
        if notes:
            details["notes"] = sorted(notes)
        if self._sensitivity:
            details["sensitivityDb"] = self._sensitivity
        return PassResult(details, trials, within)

    def _raise_sensitive(
        self,
        attempt: Callable[..., float],
        trials: list[Trial],
        model: Any,
        nodes: WeightNodes,
        base: WeightOnlyConfig,
        context: PassContext,
    ) -> int | None:
        """Move the most sensitive 4-bit nodes to 8 bits: fewest that meet the budget.

        Sensitivity is the int8 tuner's measurement (``quantize.node_sensitivity``): one float run
        over a subset of the evaluation data, then each node alone with its weight rounded to 4-bit
        and to 8-bit blocks (activations float, as weight-only leaves them); the output noise 8 bits
        removes, per byte it adds, orders the nodes.
        """
        budget = context.max_accuracy_delta
        assert budget is not None
        excluded = set(base.exclude)
        candidates = [m for m in nodes.matmuls if m not in excluded] if base.bits == 4 else []
        if base.embeddings == "int4":
            candidates += [g for g in nodes.gathers if g not in excluded]
        if not candidates:
            return None
        named = context.work_dir / "sensitivity-base.onnx"
        save_model(model, named)  # node names as the quantizer sees them (unnamed nodes were named)
        subset = context.reference.subset(SENSITIVITY_SAMPLES).dataset
        context.progress.start("weight-only: measuring node sensitivity", total=None)
        noise = {
            bits: node_sensitivity(
                named,
                candidates,
                subset,
                context.work_dir,
                ranges=None,
                per_channel=False,
                reduce_range=False,
                activations=False,
                weights=block_round_trip(bits, base.block_size, base.symmetric),
            )
            for bits in (4, 8)
        }
        context.progress.finish()
        named.unlink(missing_ok=True)
        base_bytes = context.reference.base_bytes
        elements = weight_elements(model, candidates)
        scored = [  # (noise removed, bytes added as a fraction of the base, node)
            (noise[4][n] - noise[8][n], elements.get(n, 0) / 2 / base_bytes, n) for n in candidates
        ]
        ranked = rank_for_eight_bits(scored)
        self._sensitivity = {  # most sensitive first: 4-bit noise/signal in dB
            n: round(10 * math.log10(noise[4][n]), 1) for n in ranked[:20] if noise[4][n] > 0
        }

        measured: dict[int, tuple[float, int]] = {}  # count -> (delta, trial index)

        def measure(count: int) -> float:
            if count not in measured:
                delta = attempt(
                    replace(base, eight_bit=tuple(ranked[:count])), context.reference, f"8-bit: top {count}"
                )
                measured[count] = (delta, len(trials) - 1)
            return measured[count][0]

        # Doubling finds a count within budget, bisection the smallest such count.
        context.progress.start("weight-only: raising sensitive nodes to 8 bits", total=None)
        counts = [1 << i for i in range(len(ranked).bit_length()) if 1 << i < len(ranked)] + [len(ranked)]
        low, high = 0, None
        for count in counts:
            if measure(count) <= budget:
                high = count
                break
            low = count
        if high is None:
            context.progress.finish()
            return None
        while high - low > 1:
            middle = (low + high) // 2
            if measure(middle) <= budget:
                high = middle
            else:
                low = middle
        context.progress.finish()
        return measured[high][1]

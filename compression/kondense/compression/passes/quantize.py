"""ONNX Runtime int8 quantization (dynamic and static QDQ) with accuracy-aware tuning.

Tuning, when the pipeline has an accuracy budget and ``tune`` is on, tries configurations in order of
expected speed and stops at the first one within budget:

1. per-tensor weights, 2. per-channel weights, 3. per-channel with 7-bit weights (reduce-range),
4. (static) activations quantized only where a weight op reads them, then the other calibration
   methods (MinMax, Percentile, Entropy) on that configuration,
5. (static) the most accurate of those with bias correction (int8 weights: each Conv/MatMul bias
   absorbs the mean output shift its rounded weights cause on the calibration data, ``bias_corrected``),
   then with bias correction and 16-bit activations (int8's size, but slower: float kernels between
   16-bit Q/DQ pairs),
6. the most accurate of those with the most sensitive weight nodes kept in float32: the smallest
   number of them that meets the budget, found by bisection over the sensitivity ranking.

Sensitivity is measured, not guessed: one float run over the evaluation subset records, for every
weight node, the quantization noise its int8 form would inject (activation inputs with the calibrated
ranges, or their own ranges for dynamic quantization, plus the weights at the trial's granularity), as
a noise-to-signal power ratio. The ranking costs one inference pass instead of one quantization per
node, so the tuner can consider every weight node. Nodes are kept in float32 only while the variant
stays useful: its estimated size must stay at most ``MAX_USEFUL_SIZE_RATIO`` of the base (fp16 halves
a model at float accuracy; an int8 variant larger than that is not worth its accuracy loss). Every
configuration tried is a trial in the manifest. If none meets the budget the most accurate one is kept
and ``details['tuning']`` says why in one sentence.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Callable, Iterator
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
MAX_RECOVERIES = 8  # invalid quantized graphs repaired per pass before giving up
SENSITIVITY_SAMPLES = 32  # samples of the float run that measures each node's quantization noise
MAX_USEFUL_SIZE_RATIO = 0.5  # an int8 variant larger than this fraction of the base is not useful
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
ACTIVATIONS16_NOTE = (
    "16-bit activations: int8 weights (int8's size) but ONNX Runtime has no 16-bit convolution or MatMul "
    "kernels on CPU, so these nodes run in float32 between Q/DQ pairs, slower than the base"
)


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
    calibration: str | None = None  # static: calibration method; None = the params' method
    bias_correction: bool = False  # static: biases absorb the mean output shift int8 weights cause
    activations16: bool = False  # static: 16-bit activations (weights stay int8)

    def as_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "perChannel": self.per_channel,
            "reduceRange": self.reduce_range,
            "nodesToExclude": list(self.exclude),
        }
        if self.weight_ops_only:
            config["weightOpsOnly"] = True
        if self.calibration:
            config["calibrationMethod"] = self.calibration
        if self.bias_correction:
            config["biasCorrection"] = True
        if self.activations16:
            config["activations16Bit"] = True
        return config

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> Int8Config:
        return cls(
            bool(config["perChannel"]),
            bool(config["reduceRange"]),
            tuple(config.get("nodesToExclude", ())),
            bool(config.get("weightOpsOnly")),
            config.get("calibrationMethod"),
            bool(config.get("biasCorrection")),
            bool(config.get("activations16Bit")),
        )


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


def weight_nodes(model: Any, ops: frozenset[str] = WEIGHT_OPS) -> list[str]:
    """Names of nodes whose op (one of ``ops``) ORT quantizes and that read a float initializer."""
    from onnx import TensorProto

    floats = {
        i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT and len(i.dims) >= 2
    }
    return [n.name for n in model.graph.node if n.op_type in ops and n.name and floats & set(n.input)]


def _activation_inputs(node: Any, initializers: set[str]) -> list[str]:
    """The inputs of a weight node that int8 quantizes as activations (not weights, not indices)."""
    if node.op_type == "Gather":
        return []
    return [name for name in node.input[:2] if name and name not in initializers]


def _weight_axis(node: Any) -> int:
    """The per-channel axis ORT quantizes a node's weight along (output channels)."""
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type in ("MatMul",):
        return -1
    return 0


def fake_quant(x: Any, low: float, high: float) -> Any:
    """``x`` after asymmetric 8-bit quantization over [low, high] (widened to include 0) and back."""
    import numpy as np

    values = np.asarray(x, dtype=np.float32)
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = (high - low) / 255.0
    if scale <= 0 or not np.isfinite(scale):
        return values
    zero = np.round(-128.0 - low / scale)
    return ((np.clip(np.round(values / scale) + zero, -128, 127) - zero) * scale).astype(np.float32)


def fake_quant_weight(weight: Any, per_channel: bool, axis: int, reduce_range: bool) -> Any:
    """``weight`` after symmetric int8 quantization (7-bit with reduce-range) and back."""
    import numpy as np

    w = np.asarray(weight, dtype=np.float32)
    levels = 63.0 if reduce_range else 127.0
    if per_channel and w.ndim >= 2:
        axis = axis % w.ndim
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        scale = np.abs(w).max(axis=reduce, keepdims=True) / levels
    else:
        scale = np.abs(w).max(keepdims=True) / levels
    scale = np.where(scale > 0, scale, 1.0)
    return (np.clip(np.round(w / scale), -levels - 1, levels) * scale).astype(np.float32)


# ORT type strings of the tensors a node may read, as ONNX element types (for a one-node model's inputs)
_ORT_TYPES = {"tensor(float)": 1, "tensor(int64)": 7, "tensor(int32)": 6, "tensor(float16)": 10}

# How a weight node's weight is rounded in a sensitivity measurement: (node, input index, weight) -> weight
WeightRoundTrip = Callable[[Any, int, Any], Any]


def _node_model(model: Any, node: Any, feeds: dict[str, int], weights: dict[str, Any]) -> Any:
    """A model of ``node`` alone: the tensors it reads at run time (``feeds``: name -> ONNX element
    type) as graph inputs, ``weights`` as initializers."""
    from onnx import TensorProto, helper, numpy_helper

    inputs = [helper.make_tensor_value_info(name, kind, None) for name, kind in feeds.items()]
    other = [i for i in node.input if i and i not in feeds and i not in weights]
    graph = helper.make_graph(
        [node],
        "node",
        inputs + [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None) for name in other],
        [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def node_sensitivity(
    model_path: Path,
    nodes: list[str],
    dataset: Dataset,
    work_dir: Path,
    *,
    ranges: dict[str, tuple[float, float]] | None,
    per_channel: bool,
    reduce_range: bool,
    activations: bool = True,
    weights: bool | WeightRoundTrip = True,
) -> dict[str, float]:
    """Output noise-to-signal power of each node in its quantized form (higher = more sensitive).

    One float run over ``dataset`` captures every tensor the nodes read. Each node then runs alone (a
    one-node model in ONNX Runtime) twice: on the float inputs and weights, and on their round trips
    (activations with the calibrated ranges, or their own range per batch for dynamic quantization when
    ``ranges`` is None; weights as int8 at the configuration's granularity). The ratio of the output
    difference's power to the output's power is the node's sensitivity: it sees what the node's weights
    do with the quantized activations, not only the rounding of the inputs. Nodes that cannot be run
    alone get 0 (never ranked).

    The same measurement serves other schemes: ``activations=False`` leaves activations float (weight-
    only quantization), ``weights=False`` leaves weights float (how much an activation's quantization
    alone costs), and a callable ``weights(node, input_index, weight)`` rounds weights its own way
    (4-bit blocks).
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from kondense.compression.model_files import open_session

    model = onnx.load(str(model_path))
    initializers = {i.name: i for i in model.graph.initializer}
    wanted = set(nodes)
    by_name = {n.name: n for n in model.graph.node if n.name in wanted}
    # what each node reads at run time (Gather: its indices), and which of those are quantized
    reads = {
        name: [i for i in dict.fromkeys(node.input) if i and i not in initializers]
        for name, node in by_name.items()
    }
    rounded_inputs = {
        name: set(_activation_inputs(node, set(initializers))) if activations else set()
        for name, node in by_name.items()
    }
    captured = sorted({a for names in reads.values() for a in names})
    graph_inputs = {i.name for i in model.graph.input}
    present = {o.name for o in model.graph.output}
    capture = onnx.ModelProto()
    capture.CopyFrom(model)
    for name in captured:
        if name not in graph_inputs and name not in present:
            capture.graph.output.append(onnx.ValueInfoProto(name=name))
    probe = work_dir / "sensitivity.onnx"
    onnx.save(capture, str(probe))
    del capture
    session = open_session(probe, threads=1)
    names = [o.name for o in session.get_outputs()]
    kinds = {t.name: _ORT_TYPES.get(t.type, 0) for t in (*session.get_inputs(), *session.get_outputs())}

    def round_weight(node: Any, index: int, weight: Any) -> Any:
        if callable(weights):
            return weights(node, index, weight)
        if not weights:
            return weight
        return fake_quant_weight(weight, per_channel, _weight_axis(node), reduce_range)

    singles: dict[str, tuple[Any, Any]] = {}  # node -> (float session, round-trip session)
    for name, node in by_name.items():
        own = {i: numpy_helper.to_array(initializers[i]) for i in node.input if i in initializers}
        quantized = dict(own)
        for index, key in enumerate(node.input):
            # the weight (first two inputs), not a bias or a shape
            if index < 2 and key in own and own[key].ndim >= 2 and own[key].dtype == np.float32:
                quantized[key] = round_weight(node, index, own[key])
        feeds = {a: kinds.get(a, 0) for a in reads[name]}
        if not all(feeds.values()):
            continue  # a tensor of a type this measurement does not feed: unranked
        try:
            pair: list[Any] = []
            for values in (own, quantized):
                path = work_dir / f"node-{len(singles)}-{len(pair)}.onnx"
                onnx.save(_node_model(model, node, feeds, values), str(path))
                pair.append(open_session(path, threads=1))
                path.unlink(missing_ok=True)
            singles[name] = (pair[0], pair[1])
        except Exception:  # a node ORT cannot run alone (e.g. it needs a subgraph's context): unranked
            continue
    noise = dict.fromkeys(singles, 0.0)
    signal = dict.fromkeys(singles, 0.0)
    for feed in dataset.batches(8):
        produced = {**feed, **dict(zip(names, session.run(None, feed), strict=True))}
        for name, (exact, rounded) in list(singles.items()):
            inputs = {a: np.asarray(produced[a]) for a in reads[name] if a in produced}
            if len(inputs) != len(reads[name]):
                singles.pop(name)
                continue
            quantized_inputs = {
                a: fake_quant(v, *(ranges[a] if ranges and a in ranges else (float(v.min()), float(v.max()))))
                if a in rounded_inputs[name]
                else v
                for a, v in inputs.items()
            }
            try:
                expected = np.asarray(exact.run(None, inputs)[0], dtype=np.float64)
                got = np.asarray(rounded.run(None, quantized_inputs)[0], dtype=np.float64)
            except Exception:  # shapes this node cannot take alone: unranked
                singles.pop(name)
                continue
            noise[name] += float(np.square(expected - got).sum())
            signal[name] += float(np.square(expected).sum())
    probe.unlink(missing_ok=True)
    return {
        node: (noise[node] / signal[node] if node in singles and signal.get(node, 0) > 0 else 0.0)
        for node in nodes
    }


def input_means(model_path: Path, nodes: list[str], dataset: Dataset, work_dir: Path) -> dict[str, Any]:
    """Mean of each node's activation input over ``dataset``, per channel: axis 1 for a Conv's
    [N, C, ...] input, the last axis for a MatMul's [..., K] input (one float run)."""
    import numpy as np
    import onnx

    from kondense.compression.model_files import open_session

    model = onnx.load(str(model_path))
    initializers = {i.name for i in model.graph.initializer}
    wanted = set(nodes)
    reads = {n.name: (n.op_type, n.input[0]) for n in model.graph.node if n.name in wanted}
    reads = {k: v for k, v in reads.items() if v[1] and v[1] not in initializers}
    tensors = sorted({tensor for _, tensor in reads.values()})
    present = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    for name in tensors:
        if name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    probe = work_dir / "bias-means.onnx"
    onnx.save(model, str(probe))
    del model
    try:
        session = open_session(probe, threads=1)
        names = [o.name for o in session.get_outputs()]
        totals: dict[str, Any] = {}
        counts: dict[str, int] = {}
        for batch in dataset.batches(1):
            values = dict(zip(names, session.run(None, batch), strict=True))
            values.update({k: v for k, v in batch.items() if k in tensors})
            for name in tensors:
                array = np.asarray(values[name], dtype=np.float64)
                conv = any(op in CONV_OPS and t == name for op, t in reads.values())
                if array.ndim < 2 or (conv and array.ndim < 3):
                    continue
                axes = tuple(i for i in range(array.ndim) if i != (1 if conv else array.ndim - 1))
                totals[name] = totals.get(name, 0.0) + array.mean(axis=axes)
                counts[name] = counts.get(name, 0) + 1
    finally:
        probe.unlink(missing_ok=True)
    return {node: totals[t] / counts[t] for node, (_, t) in reads.items() if t in totals}


def bias_corrected(
    model: Any, means: dict[str, Any], nodes: list[str], *, per_channel: bool, reduce_range: bool
) -> tuple[Any, list[str]]:
    """``model`` with the biases of ``nodes`` absorbing the mean output shift their int8 weights cause.

    Rounding a weight changes the response of its node to the input's mean: a convolution whose taps
    nearly cancel (an edge filter on a flat background) gains a constant offset larger than the
    response itself, and every later layer sees shifted activations. With ``Wq`` the weight's int8
    round trip (symmetric, at the configuration's granularity, as ORT's quantizer writes it) and
    ``E[x]`` the input's per-channel mean on the calibration data, the bias becomes
    ``b - (Wq - W) E[x]`` (empirical bias correction, Nagel et al. 2019, "Data-Free Quantization").
    Corrects a Conv's bias (added when it has none) and the bias a MatMul's only consumer, an Add of
    an initializer, adds; other nodes are left as they are. Returns (model copy, nodes corrected).
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper

    corrected = onnx.ModelProto()
    corrected.CopyFrom(model)
    graph = corrected.graph
    initializers = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    done: list[str] = []

    def weight_of(node: Any) -> Any:
        init = initializers.get(node.input[1]) if len(node.input) > 1 else None
        if init is None or init.data_type != TensorProto.FLOAT:
            return None
        return numpy_helper.to_array(init).astype(np.float64)

    for node in graph.node:
        if node.name not in nodes or node.name not in means or node.op_type not in ("Conv", "MatMul"):
            continue
        weight = weight_of(node)
        mean = np.asarray(means[node.name], dtype=np.float64)
        if weight is None or weight.ndim < 2:
            continue
        error = fake_quant_weight(weight, per_channel, _weight_axis(node), reduce_range) - weight
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            out_channels, per_group = weight.shape[0], weight.shape[1]
            if mean.shape != (group * per_group,) or out_channels % group:
                continue
            taps = error.reshape(out_channels, per_group, -1).sum(axis=2)  # [O, C/group]
            group_means = mean.reshape(group, per_group)[np.arange(out_channels) // (out_channels // group)]
            shift = (taps * group_means).sum(axis=1)
            bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
            if bias_name and bias_name not in initializers:
                continue  # a bias computed at run time
            bias = numpy_helper.to_array(initializers[bias_name]) if bias_name else np.zeros(out_channels)
            target, new = node, (bias - shift).astype(np.float32)
            index = 2
        else:
            if weight.ndim != 2 or mean.shape != (weight.shape[0],) or node.output[0] in outputs:
                continue
            readers = consumers.get(node.output[0], [])
            if len(readers) != 1 or readers[0].op_type != "Add":
                continue
            target = readers[0]
            index = 1 if target.input[0] == node.output[0] else 0
            bias_name = target.input[index]
            init = initializers.get(bias_name)
            if init is None or init.data_type != TensorProto.FLOAT:
                continue
            bias = numpy_helper.to_array(init)
            if bias.size != weight.shape[1] or (bias.ndim and bias.shape[-1] != weight.shape[1]):
                continue
            shift = mean @ error
            new = (bias - shift.reshape(bias.shape)).astype(np.float32)
        name = f"{node.name}_bias_corrected"
        graph.initializer.append(numpy_helper.from_array(new, name))
        while len(target.input) <= index:
            target.input.append("")
        target.input[index] = name
        done.append(node.name)
    used = {name for node in graph.node for name in node.input}
    stale = [i for i in graph.initializer if i.name not in used]  # biases replaced by corrected ones
    for init in stale:
        graph.initializer.remove(init)
    return corrected, done


def calibrated_ranges(cache: Path) -> dict[str, tuple[float, float]] | None:
    """Tensor ranges from ORT's calibration cache (its TensorsData JSON), or None if unreadable."""
    import json

    try:
        data = json.loads(cache.read_text())["data"]
        return {
            name: (float(entry["lowest"]["data"][0]), float(entry["highest"]["data"][0]))
            for name, entry in data.items()
            if isinstance(entry, dict) and "lowest" in entry and "highest" in entry
        }
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def float_weight_bytes(model: Any, nodes: list[str]) -> dict[str, int]:
    """Bytes of the float initializers each node reads (what keeping it in float32 costs)."""
    import math

    from onnx import TensorProto

    sizes = {
        i.name: 4 * math.prod(i.dims) for i in model.graph.initializer if i.data_type == TensorProto.FLOAT
    }
    wanted = set(nodes)
    return {n.name: sum(sizes.get(i, 0) for i in n.input) for n in model.graph.node if n.name in wanted}


def smallest_passing_count(limit: int, passes: Callable[[int], bool]) -> int | None:
    """The smallest count in 1..limit for which ``passes`` holds, assuming it holds from some count
    on (more nodes in float32, more accurate): doubling from 1 (capped at ``limit``), then bisection
    between the last count that failed and the first that passed. None if ``limit`` fails too."""
    low, high, count = 0, None, 1
    while 0 < count <= limit:
        if passes(count):
            high = count
            break
        low = count
        if count == limit:
            break
        count = min(count * 2, limit)
    if high is None:
        return None
    while high - low > 1:
        middle = (low + high) // 2
        if passes(middle):
            high = middle
        else:
            low = middle
    return high


def _extras(config: Int8Config) -> str:
    """What a configuration adds to plain int8, as a clause for the tuning sentence ('' if nothing)."""
    extras = [
        what
        for what, on in (
            ("bias correction", config.bias_correction),
            ("16-bit activations", config.activations16),
        )
        if on
    ]
    return f", the rest int8 with {' and '.join(extras)}" if extras else ""


def _decibels(ratio: float) -> float:
    import math

    return round(10 * math.log10(ratio), 1) if ratio > 0 else float("-inf")


class CalibrationReader:
    """ORT CalibrationDataReader over a data set (batch 1 unless the model takes any batch size)."""

    def __init__(self, dataset: Dataset, limit: int, batch_size: int) -> None:
        # whole batches only: ORT's histogram calibrators (Percentile, Entropy) stack the batches'
        # outputs and fail on a shorter last batch
        limit = min(limit, len(dataset))
        if limit >= batch_size:
            limit -= limit % batch_size
        else:
            batch_size = 1
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
    """Why ONNX Runtime refuses to load ``path`` (its reason in one line), or None if it loads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types (InvalidGraph, Fail, ...)
        from kondense.compression.intake import ort_reason

        return ort_reason(exc, limit=400)
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

    def weight_ops(self) -> frozenset[str]:
        """Op types this pass quantizes the weights of."""
        return WEIGHT_OPS

    def nothing_to_quantize(self, model: Any) -> str:
        """One sentence on why ``model`` has no node this pass would quantize."""
        return no_weights_reason(model)

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
        candidates = weight_nodes(model, self.weight_ops())
        known = {n.name for n in model.graph.node} | {
            n.name for n in onnx.load(str(source), load_external_data=False).graph.node
        }
        unknown = sorted(set(self.params.nodesToExclude) - known)
        if unknown:
            raise BadInputError("params.nodesToExclude", f"no such node(s) in the model: {unknown[:10]}")
        if not candidates:
            raise UnsupportedModelError(
                str(source), f"nothing to quantize: {self.nothing_to_quantize(model)}"
            )
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
            try:
                delta = attempt(config, context.reference)
            except UnsupportedModelError as exc:
                if not config.calibration:
                    raise
                # another calibration method is an option, not a requirement: record why, go on
                trials.append(Trial(config=config.as_dict(), message=f"failed: {exc.problem}"[:400]))
                files.append(context.work_dir / "failed.onnx")  # keeps files[i] the model of trials[i]
                context.progress.advance()
                continue
            context.progress.advance()
            if delta <= budget:
                chosen = len(trials) - 1
                break
        context.progress.finish()

        self._tuning: str | None = None
        self._sensitivity: dict[str, float] = {}
        if chosen is None:
            chosen = self.after_ladder(attempt, trials, user_exclude, context)
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
        if self._tuning:
            details["tuning"] = self._tuning
        if trials[chosen].config.get("activations16Bit"):
            details["activationsNote"] = ACTIVATIONS16_NOTE
        if self._sensitivity:
            details["sensitivityDb"] = self._sensitivity  # most sensitive first: noise/signal in dB
        return PassResult(details, trials, within)

    def extra_rungs(self, ladder: list[Int8Config]) -> list[Int8Config]:
        """Configurations a technique adds after the common ladder (none by default)."""
        return []

    def candidates(self) -> list[str]:
        import onnx

        return weight_nodes(onnx.load(str(self._graphs[0]), load_external_data=False), self.weight_ops())

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
            weights = weight_nodes(onnx.load(str(graph), load_external_data=False), self.weight_ops())
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

    def sensitivity_ranges(self, config: Int8Config) -> dict[str, tuple[float, float]] | None:
        """Activation ranges the quantized model would use (static: calibrated); None: per batch."""
        return None

    def after_ladder(
        self, attempt: Any, trials: list[Trial], user_exclude: tuple[str, ...], context: PassContext
    ) -> int | None:
        """A configuration a technique tries when the ladder missed the budget, before any node is
        kept in float32 (none by default): the index of its trial if within budget, else None."""
        return None

    def _fp32_fallback(
        self,
        attempt: Any,
        trials: list[Trial],
        candidates: list[str],
        user_exclude: tuple[str, ...],
        context: PassContext,
    ) -> int | None:
        """Keep the fewest most sensitive weight nodes in float32 that meet the budget.

        Nodes are ranked by the quantization noise they would inject (one float run, see
        ``node_sensitivity``); the number kept is found by doubling then bisection over the ranking,
        each candidate count a full-set trial, up to the count at which the variant would be larger
        than ``MAX_USEFUL_SIZE_RATIO`` of the base. Sets ``self._tuning`` (what happened) either way.
        """
        import onnx

        budget = context.max_accuracy_delta
        assert budget is not None
        full = len(context.reference.dataset)
        best_index = most_accurate_full_trial(trials, full)
        best = replace(Int8Config.from_dict(trials[best_index].config), exclude=user_exclude)
        best_delta = trials[best_index].accuracyDelta or 0.0
        best_size = trials[best_index].sizeRatio or 1.0
        pool = [n for n in candidates if n not in user_exclude]

        context.progress.start(f"{self.technique}: measuring node sensitivity", total=None)
        graph = self._graphs[0]
        scores = node_sensitivity(
            graph,
            pool,
            context.reference.subset(SENSITIVITY_SAMPLES).dataset,
            context.work_dir,
            ranges=self.sensitivity_ranges(best),
            per_channel=best.per_channel,
            reduce_range=best.reduce_range,
            activations=not best.activations16,  # 16-bit rounding is 256x finer: weights' noise only
        )
        context.progress.finish()
        ranked = [n for n in sorted(pool, key=lambda n: -scores[n]) if scores[n] > 0]
        self._sensitivity = {n: _decibels(scores[n]) for n in ranked[:20]}

        # How many nodes can stay float32 while the variant remains useful (estimated from weights).
        costs = float_weight_bytes(onnx.load(str(graph), load_external_data=False), ranked)
        base_bytes = context.reference.base_bytes
        size, limit = best_size, 0
        for node in ranked[: max(len(pool) - 1, 0)]:  # at least one weight node stays int8
            size += 0.75 * costs.get(node, 0) / base_bytes
            if size > MAX_USEFUL_SIZE_RATIO:
                break
            limit += 1
        if limit == 0:
            self._tuning = (
                f"no configuration within the budget {budget}: the most accurate has delta {best_delta:.4f} "
                f"and keeping even the most sensitive node ({ranked[0] if ranked else 'none'}) in float32 "
                f"would make the variant larger than {MAX_USEFUL_SIZE_RATIO:.0%} of the base"
            )
            return None

        results: dict[int, tuple[int, float]] = {}  # count -> (trial index, delta)

        def measure(count: int) -> bool:
            if count not in results:
                kept = ranked[:count]
                delta = attempt(
                    replace(best, exclude=(*user_exclude, *kept)),
                    context.reference,
                    f"float32: the {count} most sensitive node(s) (last {kept[-1]})",
                )
                results[count] = (len(trials) - 1, delta)
                context.progress.advance()
            return results[count][1] <= budget

        context.progress.start(f"{self.technique}: keeping sensitive nodes in float32", total=None)
        high = smallest_passing_count(limit, measure)
        if high is None:
            context.progress.finish()
            index, delta = results[limit]
            self._tuning = (
                f"budget {budget} not reached at a useful size: keeping the {limit} most sensitive weight "
                f"node(s) in float32 (size {trials[index].sizeRatio or 0:.2f} of the base, the most "
                f"before it would exceed {MAX_USEFUL_SIZE_RATIO:.0%}) still gives delta {delta:.4f}; the "
                "most accurate configuration is kept"
            )
            return None
        context.progress.finish()
        self._tuning = (
            f"within budget with the {high} most sensitive of {len(pool)} weight node(s) in float32 "
            f"({len(results)} count(s) tried by doubling and bisection){_extras(best)}"
        )
        return results[high][0]


CONV_OPS = frozenset({"Conv", "ConvTranspose"})
# ORT's dynamic quantizer's op types (onnxruntime.quantization.registry.IntegerOpsRegistry) less Conv:
# its ConvInteger kernels measured 4-20x slower than float32 on CPU (benchmarks/results/models.md,
# OCR classifier 0.05x, detector and recogniser 0.17x on an AMD EPYC with AVX-512 VNNI).
DYNAMIC_OPS_WITHOUT_CONV = ("Attention", "EmbedLayerNormalization", "Gather", "LSTM", "MatMul", "Transpose")
DYNAMIC_CONV_NOTE = (
    "Conv/ConvTranspose kept float32: ONNX Runtime's dynamic ConvInteger kernels are several times "
    "slower than float32 on CPU (params.quantizeConv: true quantizes them anyway; static-int8 "
    "quantizes convolutions with fast kernels)"
)


@register
class DynamicInt8Pass(Int8Pass):
    technique = Technique.DYNAMIC_INT8
    preprocess_first = False
    params: DynamicInt8Params

    def weight_ops(self) -> frozenset[str]:
        return WEIGHT_OPS if self.params.quantizeConv else WEIGHT_OPS - CONV_OPS

    def nothing_to_quantize(self, model: Any) -> str:
        convs = weight_nodes(model, CONV_OPS)
        if convs and not self.params.quantizeConv:
            return (
                f"its {len(convs)} weight node(s) are all Conv/ConvTranspose, which dynamic-int8 keeps in "
                "float32 by default because ONNX Runtime's dynamic ConvInteger kernels are several times "
                "slower than float32 on CPU; use static-int8 (fast int8 convolutions), or set "
                "params.quantizeConv: true for a smaller but slower model"
            )
        return no_weights_reason(model)

    def run(self, source: Path, destination: Path, context: PassContext) -> PassResult:
        import onnx

        result = super().run(source, destination, context)
        if not self.params.quantizeConv:
            kept = weight_nodes(onnx.load(str(source), load_external_data=False), CONV_OPS)
            if kept:
                result.details["convolutionsKeptFloat32"] = len(kept)
                result.details["convolutionNote"] = DYNAMIC_CONV_NOTE
        return result

    def quantize(self, source: Path, destination: Path, config: Int8Config, context: PassContext) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            str(source),
            str(destination),
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            weight_type=QuantType.QInt8 if self.params.weightType == "int8" else QuantType.QUInt8,
            nodes_to_exclude=list(config.exclude),
            op_types_to_quantize=None if self.params.quantizeConv else list(DYNAMIC_OPS_WITHOUT_CONV),
        )


@register
class StaticInt8Pass(Int8Pass):
    technique = Technique.STATIC_INT8
    params: StaticInt8Params

    def extra_rungs(self, ladder: list[Int8Config]) -> list[Int8Config]:
        """Activation quantization of non-weight ops (Add, Mul, ReduceSum of a hand-written layer
        norm: magika) can ruin accuracy where no weight node is to blame: quantize weight ops only.
        Then the other calibration methods on that configuration: Percentile and Entropy clip the
        outliers that make MinMax ranges coarse (a recalibration each).

        8-bit per-channel weights unless the user asked for reduce-range: 7-bit weights (the ladder's last
        rung) double the rounding error and are a remedy for int16 saturation on CPUs without VNNI, not
        for activations (OCR recogniser: 0.078 with 7-bit, 0.057 with 8-bit weights)."""
        weight_ops = replace(
            ladder[-1], per_channel=True, reduce_range=self.params.reduceRange, weight_ops_only=True
        )
        others = [m for m in CALIBRATION_METHODS if m != self.params.calibrationMethod]
        return [weight_ops, *(replace(weight_ops, calibration=method) for method in others)]

    def prepare(self, source: Path, context: PassContext) -> None:
        self._caches = {
            method: (context.work_dir / f"calibration-{method}.json").resolve()
            for method in CALIBRATION_METHODS
        }
        for cache in self._caches.values():
            cache.unlink(missing_ok=True)
        self._means: dict[str, dict[str, Any]] = {}  # graph -> weight node -> its input's channel means

    def sensitivity_ranges(self, config: Int8Config) -> dict[str, tuple[float, float]] | None:
        cache = self._caches[config.calibration or self.params.calibrationMethod]
        return calibrated_ranges(cache) if cache.is_file() else None

    def after_ladder(
        self, attempt: Any, trials: list[Trial], user_exclude: tuple[str, ...], context: PassContext
    ) -> int | None:
        """On the most accurate configuration: bias correction (``bias_corrected``), then bias
        correction with 16-bit activations. Weights stay int8 in both, so the variant keeps int8's
        size; 16-bit activations run as float kernels between Q/DQ pairs (ONNX Runtime has no 16-bit
        convolution or MatMul kernels on CPU), slower than int8 and than the base. The float32
        fallback then starts from whichever trial is most accurate. Bias correction only for int8
        weights (ORT rounds uint8 weights asymmetrically)."""
        budget = context.max_accuracy_delta
        if budget is None:
            return None
        best = replace(
            Int8Config.from_dict(
                trials[most_accurate_full_trial(trials, len(context.reference.dataset))].config
            ),
            exclude=user_exclude,
        )
        correct = False
        if self.params.weightType == "int8":
            try:
                correct = (
                    self.corrected_source(self._graphs[0], replace(best, bias_correction=True), context)
                    != self._graphs[0]
                )
            except Exception:  # an option, not a requirement (e.g. a graph too large to save as one file)
                correct = False
        options = [(replace(best, bias_correction=True), "bias correction")] if correct else []
        options.append(
            (
                replace(best, bias_correction=correct, activations16=True),
                "16-bit activations" + (" and bias correction" if correct else ""),
            )
        )
        context.progress.start(f"{self.technique}: bias correction, 16-bit activations", total=len(options))
        try:
            for config, what in options:
                try:
                    delta = attempt(config, context.reference, f"{what} on the most accurate configuration")
                except UnsupportedModelError:  # an option, not a requirement
                    continue
                finally:
                    context.progress.advance()
                if delta <= budget:
                    self._tuning = (
                        f"within budget with {what} on the most accurate configuration, every weight int8"
                    )
                    return len(trials) - 1
        finally:
            context.progress.finish()
        return None

    def corrected_source(self, source: Path, config: Int8Config, context: PassContext) -> Path:
        """``source`` with bias correction for the nodes ``config`` quantizes (input means measured
        once per graph on the calibration data)."""
        import onnx

        assert context.calibration is not None
        model = onnx.load(str(source))
        nodes = [
            n
            for n in weight_nodes(model, self.weight_ops())
            if n not in config.exclude and n not in self._forced[config.per_channel]
        ]
        key = str(source)
        if key not in self._means:
            self._means[key] = input_means(
                source, nodes, context.calibration.take(self.params.calibrationSamples), context.work_dir
            )
        corrected, done = bias_corrected(
            model,
            self._means[key],
            nodes,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
        )
        if not done:
            return source
        path = (context.work_dir / "bias-corrected.onnx").resolve()
        onnx.save(corrected, str(path))
        return path

    def quantize(self, source: Path, destination: Path, config: Int8Config, context: PassContext) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        from kondense.compression.model_files import load_model, signature_of

        methods = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }
        types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
        wide = {"int8": QuantType.QInt16, "uint8": QuantType.QUInt16}  # ORT converts the graph to opset 21
        reader = None
        if context.calibration is None:
            raise BadInputError("calibration", "static-int8 needs calibration data")
        method = config.calibration or self.params.calibrationMethod
        cache = self._caches[method]
        if not cache.is_file():  # calibrate once per method; later trials reuse the cached tensor ranges
            dynamic = signature_of(load_model(source, with_weights=False)).dynamic_batch
            reader = CalibrationReader(
                context.calibration, self.params.calibrationSamples, 16 if dynamic else 1
            )
        # the corrected graph differs only in biases: the activation ranges calibrated on the graph as
        # given (cached by an earlier trial) hold for it
        quantized = self.corrected_source(source, config, context) if config.bias_correction else source
        # ORT 1.32's quantize_static leaves a <uuid>.data copy of the weights in the current directory
        # (its model_input copy is saved with external data); run it from the step's work directory.
        with contextlib.chdir(context.work_dir.resolve()):
            quantize_static(
                str(quantized.resolve()),
                str(destination.resolve()),
                reader,  # duck-typed CalibrationDataReader
                quant_format=QuantFormat.QDQ,
                per_channel=config.per_channel,
                reduce_range=config.reduce_range,
                activation_type=wide[self.params.activationType]
                if config.activations16
                else types[self.params.activationType],
                weight_type=types[self.params.weightType],
                nodes_to_exclude=list(config.exclude),
                op_types_to_quantize=sorted(WEIGHT_OPS - {"LSTM", "Attention"})
                if config.weight_ops_only
                else None,
                calibrate_method=methods[method],
                calibration_cache_path=str(cache),
                # ORT 1.32 folds a removable Relu/Clip into a 16-bit output's range wrongly: keep them
                extra_options={"QDQKeepRemovableActivations": True} if config.activations16 else {},
            )

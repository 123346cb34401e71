"""Model intake: normalise a base model once, before any technique runs.

Models exported by other tools reach kondense in many shapes: weights stored as ``Constant`` nodes
(paddle2onnx, TorchScript without constant folding), old opsets (11/12), weights in external data
files, dynamic H×W that defeats ORT's symbolic shape inference. Every pass used to meet these alone,
and failed in its own way. Intake does the normalisation once:

1. **load** the model with its external data, and ``onnx.checker`` it;
2. **upgrade the opset** to at least ``MIN_OPSET`` with the ONNX version converter (ORT's quantizer
   needs opset >= 13 for per-channel QDQ and otherwise rewrites only the opset number, which breaks
   ops whose semantics changed at 13: Split, Squeeze, Unsqueeze, ReduceSum take axes as inputs);
3. **fold constants** at the ONNX level: every ``Constant`` node of the main graph becomes an
   initializer, then nodes whose inputs are all initializers (``Cast``, ``Reshape``, ``Transpose``,
   ``Mul``… of weights) are evaluated with ONNX's reference evaluator and replaced by their result.
   We fold at the ONNX level rather than saving ORT's ``ORT_ENABLE_BASIC`` optimised model because the
   latter also *fuses* (BatchNormalization into Conv, Add into Conv…) and stamps the graph with the
   ORT version's choices; folding is all the passes need (weights visible as initializers), and the
   variant stays a plain ONNX graph that ORT optimises at load time as before;
4. **name nodes** that have no name (quantization excludes nodes by name);
5. **infer shapes**: ONNX's own inference (milliseconds); ORT's symbolic inference only for what it
   left without a shape (symbolic inference takes tens of seconds on dynamic H×W and gives up on
   some graphs, e.g. paddle2onnx's Concat(axis=-1) of shape values); what succeeded is recorded,
   a failure is a note, never fatal;
6. **keep the signature**: graph inputs and outputs (names, types, shapes) are restored exactly;
7. **verify**: the normalised model must load in ONNX Runtime and, given a sample, reproduce the
   original's outputs; otherwise intake hands the original model to the passes and says why.

``IntakeResult.record()`` is what the manifest keeps: each change made, each fallback taken.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kondense.compression.errors import BadInputError

if TYPE_CHECKING:
    import onnx

MIN_OPSET = 13
MAX_FOLD_ELEMENTS = 1 << 24  # a folded tensor larger than this (64 MB of float32) stays a computation
# Ops whose result depends only on their inputs and attributes, safe to evaluate once at intake.
FOLDABLE_OPS = frozenset(
    {
        "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sqrt", "Reciprocal", "Pow", "Exp", "Log",
        "Cast", "CastLike", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat",
        "Slice", "Gather", "Identity", "Expand", "Tile", "Clip", "Min", "Max", "Sign", "Floor",
        "Ceil", "Equal", "Less", "Greater", "Not", "And", "Or", "Where", "Range",
        "ConstantOfShape", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
        "MatMul", "Shape", "Size",
    }
)  # fmt: skip
VERIFY_RTOL = 1e-3


@dataclass
class IntakeResult:
    """The model the passes should read, and what intake did to get it."""

    path: Path
    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source_opset: int = 0
    opset: int = 0
    shape_inference: str = "none"
    constant_nodes_folded: int = 0
    nodes_folded: int = 0
    external_data: list[str] = field(default_factory=list)
    inputs_removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def record(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "changes": self.changes,
            "notes": self.notes,
            "sourceOpset": self.source_opset,
            "opset": self.opset,
            "shapeInference": self.shape_inference,
            "constantNodesFolded": self.constant_nodes_folded,
            "nodesFolded": self.nodes_folded,
            "externalData": self.external_data,
            "initializerInputsRemoved": self.inputs_removed,
        }


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def external_data_files(model: onnx.ModelProto) -> list[str]:
    import onnx

    return sorted(
        {
            entry.value
            for tensor in model.graph.initializer
            if tensor.data_location == onnx.TensorProto.EXTERNAL
            for entry in tensor.external_data
            if entry.key == "location"
        }
    )


def first_line(exc: BaseException, limit: int = 240) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


_ORT_PREFIX = re.compile(r"\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ")
_SOURCE_LOCATION = re.compile(r"^\S+\.(?:cc|cpp|cxx|h|hpp):\d+\s+")
_INNER_LOCATION = re.compile(r"\S+\.(?:cc|cpp|cxx|h|hpp):\d+\s+")
_LOAD_FROM = re.compile(r"^Load model from \S+ failed:\s*")  # a scratch path says nothing to a user


def _skip_signature(text: str) -> str:
    """``text`` without a leading C++ signature (``ns::Class::Method(args...) const``), if any."""
    match = re.match(r"[\w:~<>,*& ]*::[\w~]+\(", text)
    if not match:
        return text
    depth, index = 0, match.end() - 1
    for index in range(match.end() - 1, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            break
    rest = text[index + 1 :].lstrip()
    return rest[len("const") :].lstrip() if rest.startswith("const") else rest


def ort_reason(exc: BaseException | str, limit: int = 300) -> str:
    """ONNX Runtime's own reason from one of its errors, in one line: without the
    ``[ONNXRuntimeError] : 1 : FAIL :`` prefixes, the C++ source location and the C++ function
    signature ORT prints before the reason (``onnxruntime::Graph::Graph(const onnxruntime::Model&...``)
    and the ``Load model from <scratch path> failed:`` preamble."""
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__ if isinstance(exc, BaseException) else "unknown error"
    pieces = [p.strip() for p in _ORT_PREFIX.split(text)]
    reason = _LOAD_FROM.sub("", next((p for p in reversed(pieces) if p), text))
    located = _SOURCE_LOCATION.sub("", reason)
    if located != reason:
        reason = _skip_signature(located) or located
    inner = _INNER_LOCATION.search(
        reason
    )  # a kernel's failure: "... Status Message: <file>:<line> <sig> why"
    if inner:
        reason = reason[: inner.start()] + (_skip_signature(reason[inner.end() :]) or reason[inner.end() :])
    return reason[:limit]


# --- 1b. legacy IR: initializers declared as graph inputs -----------------------------------------


def promote_initializer_inputs(model: onnx.ModelProto, fed: set[str] | None = None) -> list[str]:
    """Make initializers that are also graph inputs plain initializers (IR < 4 models).

    Before IR version 4 every initializer had to be listed as a graph input too (onnx-caffe2 and old
    PyTorch exports); ONNX Runtime then treats it as an overridable default, not a constant, so no
    pass sees a weight. Those not in ``fed`` (inputs the user's data feeds) leave the graph inputs;
    the IR version is raised to what the model's opsets need (at least 4), else the checker rejects
    an initializer that is not an input. Returns the names removed from the inputs.
    """
    fed = fed or set()
    initializers = {t.name for t in model.graph.initializer}
    promoted = [v.name for v in model.graph.input if v.name in initializers and v.name not in fed]
    if not promoted:
        return []
    kept = [v for v in model.graph.input if v.name not in set(promoted)]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    raise_ir_version(model)
    return promoted


def raise_ir_version(model: onnx.ModelProto) -> None:
    """IR version at least 4 and at least what the model's opset imports need (never lowered)."""
    from onnx import helper

    needed = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    model.ir_version = max(model.ir_version, needed, 4)


def run_time_constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Tensors ``ConstantOfShape`` makes from an initializer shape, which intake folds into
    initializers (legacy IR: after ``promote_initializer_inputs``): name -> a data-less TensorProto
    with their type and dims, so ``inspect`` can tell what the passes will see."""
    from onnx import TensorProto, numpy_helper

    legacy = model.ir_version < 4
    inputs = {v.name for v in model.graph.input}
    shapes = {t.name: t for t in model.graph.initializer if legacy or t.name not in inputs}
    out: dict[str, onnx.TensorProto] = {}
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx"):
            continue
        if not node.input or node.input[0] not in shapes:
            continue
        dims = [int(d) for d in numpy_helper.to_array(shapes[node.input[0]]).reshape(-1)]
        if int(np.prod(dims, dtype=np.int64)) > MAX_FOLD_ELEMENTS:
            continue
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        tensor = TensorProto(name=node.output[0], dims=dims)
        tensor.data_type = value.data_type if value is not None else TensorProto.FLOAT
        out[node.output[0]] = tensor
    return out


# --- 2. opset ---------------------------------------------------------------------------------------


def upgrade_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """The ONNX version converter to ``target``; raises ``BadInputError`` naming the op it stopped on."""
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, target)
    except Exception as exc:  # the converter raises RuntimeError/IndexError/... from C++
        raise BadInputError("opset", f"cannot upgrade to opset {target}: {first_line(exc)}") from exc


# --- 3. constants -----------------------------------------------------------------------------------


def constant_node_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a ``Constant`` node produces (any of its attribute forms), or None (sparse)."""
    from onnx import helper, numpy_helper

    attr = node.attribute[0] if len(node.attribute) == 1 else None
    if attr is None:
        return None
    name = node.output[0]
    if attr.name == "value":
        tensor = type(attr.t)()
        tensor.CopyFrom(attr.t)
        tensor.name = name
        return tensor
    scalars: dict[str, Any] = {
        "value_float": np.array(attr.f, dtype=np.float32),
        "value_int": np.array(attr.i, dtype=np.int64),
        "value_floats": np.array(list(attr.floats), dtype=np.float32),
        "value_ints": np.array(list(attr.ints), dtype=np.int64),
    }
    if attr.name in scalars:
        return numpy_helper.from_array(scalars[attr.name], name)
    if attr.name == "value_string":
        return helper.make_tensor(name, helper.TensorProto.STRING, [], [attr.s])
    return None  # sparse_value, value_strings: left as nodes


def fold_constant_nodes(model: onnx.ModelProto) -> int:
    """Turn main-graph ``Constant`` nodes into initializers; returns how many."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    kept, folded = [], 0
    for node in graph.node:
        tensor = constant_node_value(node) if node.op_type == "Constant" and not node.domain else None
        if tensor is None or node.output[0] in outputs:
            kept.append(node)
            continue
        graph.initializer.append(tensor)
        folded += 1
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
    return folded


def fold_constant_subgraphs(model: onnx.ModelProto) -> int:
    """Evaluate nodes whose inputs are all initializers (in topological order) and replace them by
    initializers holding their outputs. Only deterministic ops of ``FOLDABLE_OPS`` in the default
    domain, no subgraph attributes, results up to ``MAX_FOLD_ELEMENTS``. Returns nodes folded."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    opset = default_opset(model)
    values: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    consumers = Counter(name for node in graph.node for name in node.input)
    kept, folded = [], 0
    for node in graph.node:
        inputs = [n for n in node.input if n]
        foldable = (
            node.op_type in FOLDABLE_OPS
            and node.domain in ("", "ai.onnx")
            and inputs
            and all(n in values and n not in graph_inputs for n in inputs)
            and not any(o in outputs for o in node.output)
            and not any(
                a.type in (helper.AttributeProto.GRAPH, helper.AttributeProto.GRAPHS) for a in node.attribute
            )
        )
        if not foldable:
            kept.append(node)
            continue
        mini = helper.make_model(
            helper.make_graph(
                [node],
                "fold",
                [],
                [
                    helper.make_tensor_value_info(o, helper.TensorProto.UNDEFINED, None)
                    for o in node.output
                    if o
                ],
                [values[n] for n in dict.fromkeys(inputs)],
            ),
            opset_imports=[helper.make_opsetid("", opset)],
        )
        try:
            results = ReferenceEvaluator(mini).run(None, {})
        except Exception:  # an op the reference evaluator cannot run: keep the node
            kept.append(node)
            continue
        if any(np.asarray(r).size > MAX_FOLD_ELEMENTS for r in results):
            kept.append(node)
            continue
        for name, result in zip([o for o in node.output if o], results, strict=True):
            tensor = numpy_helper.from_array(np.asarray(result), name)
            graph.initializer.append(tensor)
            values[name] = tensor
        folded += 1
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
        used = {name for node in graph.node for name in node.input} | outputs
        used |= {name for node in graph.node for name in _subgraph_inputs(node)}
        unused = [t for t in graph.initializer if t.name not in used and t.name not in graph_inputs]
        for tensor in unused:
            graph.initializer.remove(tensor)
    del consumers
    return folded


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing scope."""
    from onnx import helper

    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == helper.AttributeProto.GRAPH else list(attr.graphs)
        for sub in graphs:
            for inner in sub.node:
                names.update(inner.input)
                names |= _subgraph_inputs(inner)
    return names


def raw_encode_initializers(model: onnx.ModelProto) -> int:
    """Re-encode initializers held in typed fields (``float_data``, as paddle2onnx writes Constants)
    as ``raw_data``. Values are unchanged; converters that rewrite tensors (onnxconverter-common's
    float16) keep typed fields typed, and float16 in ``int32_data`` is a varint per value: 1.5x
    smaller instead of 2x. Returns how many tensors were re-encoded."""
    from onnx import TensorProto, numpy_helper

    changed = 0
    for index, tensor in enumerate(model.graph.initializer):
        typed = tensor.float_data or tensor.int32_data or tensor.int64_data or tensor.double_data
        if tensor.data_location == TensorProto.EXTERNAL or tensor.HasField("raw_data") or not typed:
            continue
        model.graph.initializer[index].CopyFrom(
            numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name)
        )
        changed += 1
    return changed


def name_unnamed_nodes(model: onnx.ModelProto, infix: str = "") -> int:
    """Give main-graph nodes without a name a unique one (``<op><infix>_<index>``): quantization
    excludes nodes, and the tuner and the manifest report them, by name. Returns how many were named."""
    taken = {n.name for n in model.graph.node if n.name}
    named = 0
    for index, node in enumerate(model.graph.node):
        if node.name:
            continue
        name = f"{node.op_type}{infix}_{index}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)
        named += 1
    return named


# --- 4./5. shapes and signature ---------------------------------------------------------------------


def missing_shapes(model: onnx.ModelProto) -> list[str]:
    """Main-graph node outputs without an inferred shape."""
    graph = model.graph
    known = {
        v.name
        for v in [*graph.value_info, *graph.input, *graph.output]
        if v.type.tensor_type.HasField("shape")
    } | {t.name for t in graph.initializer}
    return [name for node in graph.node for name in node.output if name and name not in known]


def _symbolic_failure(exc: BaseException) -> str:
    """Which op handler of ORT's symbolic shape inference gave up (its traceback names it)."""
    import traceback

    handlers = [
        f.name[len("_infer_") :]
        for f in traceback.extract_tb(exc.__traceback__)
        if f.name.startswith("_infer_")
    ]
    handler = next((h for h in reversed(handlers) if h != "impl"), None)
    where = f" in its {handler} handler" if handler else ""
    return (
        f"{type(exc).__name__}{where}: {first_line(exc, 120)}"
        if str(exc).strip()
        else f"{type(exc).__name__}{where}"
    )


def infer_shapes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str, list[str]]:
    """(model with value_info, which inference was used, notes). Never raises.

    ONNX's own inference first (milliseconds); ORT's symbolic inference only when ONNX's left node
    outputs without a shape (it can take tens of seconds on dynamic H×W, and gives up on some graphs:
    then ONNX's partial shapes are kept and the note says where symbolic inference stopped).
    """
    import onnx

    notes: list[str] = []
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        method = "onnx"
    except Exception as exc:
        notes.append(f"ONNX shape inference failed ({first_line(exc, 160)})")
        inferred, method = model, "none"
    missing = missing_shapes(inferred)
    if not missing:
        return inferred, method, notes
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        symbolic = SymbolicShapeInference.infer_shapes(inferred, auto_merge=True, guess_output_rank=True)
        if symbolic is None:
            raise RuntimeError("Incomplete symbolic shape inference")
        return symbolic, "symbolic", notes
    except Exception as exc:  # incomplete symbolic inference raises plain Exception / AssertionError
        notes.append(
            f"symbolic shape inference failed ({_symbolic_failure(exc)}); kept {method} shapes, "
            f"{len(missing)} tensor(s) without shape (first: {missing[0]!r})"
        )
        return inferred, method if method == "none" else f"{method} (partial)", notes


def restore_signature(
    model: onnx.ModelProto, original: onnx.ModelProto, dropped: set[str] | None = None
) -> None:
    """Graph inputs and outputs exactly as the original declared them, except the ``dropped``
    inputs (initializers of a legacy IR model that intake made constants)."""
    initializers = {t.name for t in model.graph.initializer}
    original_inputs = [v for v in original.graph.input if v.name not in (dropped or set())]
    original_input_names = {v.name for v in original_inputs}
    # Inputs that were initializers in the original stay declared (old IR); new ones are not added.
    del model.graph.input[:]
    model.graph.input.extend(
        v for v in original_inputs if v.name not in initializers or v.name in original_input_names
    )
    del model.graph.output[:]
    model.graph.output.extend(original.graph.output)
    # Symbolic inference also writes value_info for graph outputs; a second declaration of an output
    # misleads converters (onnxconverter-common retyped it to float16 behind keep_io_types).
    boundary = {v.name for v in [*model.graph.input, *model.graph.output]}
    kept = [v for v in model.graph.value_info if v.name not in boundary]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)


# --- 6. verification ----------------------------------------------------------------------------


def _session(source: Any) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def outputs_match(expected: list[Any], got: list[Any]) -> str | None:
    """None when equal within tolerance, else which output differs and by how much."""
    for index, (a, b) in enumerate(zip(expected, got, strict=True)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return f"output {index} shape {list(b.shape)} differs from {list(a.shape)}"
        if a.dtype.kind in "fc":
            scale = float(np.abs(a).max()) if a.size else 0.0
            diff = float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
            if diff > VERIFY_RTOL * max(scale, 1.0):
                return f"output {index} differs by {diff:.3g} (scale {scale:.3g})"
        elif not np.array_equal(a, b):
            return f"output {index} differs"
    return None


# --- entry point --------------------------------------------------------------------------------


def normalise(
    source: str | Path, work_dir: str | Path, *, sample: dict[str, np.ndarray] | None = None
) -> IntakeResult:
    """Normalise ``source`` into ``work_dir/intake.onnx`` (or hand back ``source`` untouched).

    ``sample`` (one input batch) lets intake check that the normalised model computes the same outputs.
    Raises ``BadInputError`` (one sentence) only for a model that cannot be read or checked.
    """
    import onnx

    from kondense.compression.model_files import load_model

    source, work_dir = Path(source), Path(work_dir)
    original = load_model(source)  # external data loaded, checker run: BadInputError otherwise
    result = IntakeResult(
        path=source, external_data=external_data_files(onnx.load(str(source), load_external_data=False))
    )
    result.source_opset = result.opset = default_opset(original)
    model = onnx.ModelProto()
    model.CopyFrom(original)
    if result.external_data:
        result.changes.append(f"weights read from external data {result.external_data} into one file")

    legacy_ir = original.ir_version
    result.inputs_removed = promote_initializer_inputs(model, set(sample or {})) if legacy_ir < 4 else []
    legacy_change = len(result.changes)  # where the IR change goes once the opset step fixed the IR

    if 0 < result.opset < MIN_OPSET:
        try:
            model = upgrade_opset(model, MIN_OPSET)
            # The converter keeps the IR version, while opset 13 needs IR 7, and the initializers it
            # adds (Squeeze/Unsqueeze axes become inputs) are not graph inputs, which IR < 4 forbids.
            raise_ir_version(model)
            result.changes.append(f"opset {result.opset} -> {MIN_OPSET} (ONNX version converter)")
            result.opset = MIN_OPSET
        except BadInputError as exc:
            result.notes.append(f"kept opset {result.opset}: {exc.problem}")

    if result.inputs_removed:
        shown = ", ".join(result.inputs_removed[:3]) + (", ..." if len(result.inputs_removed) > 3 else "")
        result.changes.insert(
            legacy_change,
            f"IR version {legacy_ir} -> {model.ir_version}: {len(result.inputs_removed)} initializer(s) "
            f"declared as graph inputs ({shown}) are constants, no longer inputs",
        )

    result.constant_nodes_folded = fold_constant_nodes(model)
    if result.constant_nodes_folded:
        result.changes.append(f"{result.constant_nodes_folded} Constant node(s) -> initializers")
    try:
        result.nodes_folded = fold_constant_subgraphs(model)
    except Exception as exc:  # folding is an improvement, never a reason to fail
        result.notes.append(f"constant subgraph folding skipped: {first_line(exc)}")
    if result.nodes_folded:
        result.changes.append(f"{result.nodes_folded} node(s) on constants folded (ONNX reference evaluator)")

    encoded = raw_encode_initializers(model)
    if encoded:
        result.changes.append(f"{encoded} initializer(s) re-encoded as raw data")
    named = name_unnamed_nodes(model)
    if named:
        result.changes.append(f"{named} unnamed node(s) named <op>_<index>")

    inferred, result.shape_inference, shape_notes = infer_shapes(model)
    result.notes.extend(shape_notes)
    restore_signature(inferred, original, dropped=set(result.inputs_removed))
    model = inferred

    if not result.changes:
        return result  # shapes alone are not worth a new file: passes infer what they need

    work_dir.mkdir(parents=True, exist_ok=True)
    target = work_dir / "intake.onnx"
    problem = _save_and_verify(model, source, target, sample, result.notes)
    if problem:
        result.notes.append(f"normalised model not used ({problem}); passes read the original")
        result.changes.clear()
        result.opset = result.source_opset
        result.constant_nodes_folded = result.nodes_folded = 0
        result.inputs_removed = []
        return result
    result.path = target
    return result


def _save_and_verify(
    model: onnx.ModelProto,
    source: Path,
    target: Path,
    sample: dict[str, np.ndarray] | None,
    notes: list[str],
) -> str | None:
    """Save ``model`` to ``target``; None if it checks, loads and matches the original on ``sample``."""
    import onnx

    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        return f"ONNX checker: {first_line(exc)}"
    large = model.ByteSize() > (1 << 31) - (1 << 24)
    if large:
        onnx.save(model, str(target), save_as_external_data=True, location=target.name + ".data")
    else:
        onnx.save(model, str(target))
    try:
        session = _session(str(target))
    except Exception as exc:
        return f"ONNX Runtime cannot load it: {ort_reason(exc)}"
    if sample is None:
        return None
    try:
        expected = _session(str(source)).run(None, sample)
    except Exception as exc:  # the sample does not fit the original: nothing to compare against
        notes.append(f"not verified on the sample: the original rejects it ({ort_reason(exc, 160)})")
        return None
    try:
        got = session.run(None, sample)
    except Exception as exc:
        return f"it fails on a sample the original runs: {ort_reason(exc)}"
    return outputs_match(expected, got)

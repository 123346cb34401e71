"""A small ONNX → torch converter for the models the training passes handle (CNNs, MLPs, small
transformers and the elementwise/shape ops around them), and the torch → ONNX export back.

Why not onnx2torch: it imports torchvision at import time, and the torchvision wheel PyPI serves is
a CUDA build that cannot load against the CPU torch this project pins. Weighted ops become real
``nn.Conv*``/``nn.ConvTranspose*``/``nn.Linear``/``nn.BatchNorm*``/``nn.LayerNorm``/``nn.Embedding``
modules, so torch-pruning and ``torch.nn.utils.prune`` see ordinary layers.

Each ONNX op type has one small converter function registered with ``@converter("Op")``;
``build_module`` is a loop over the nodes. An op without a converter is a clear
``UnsupportedModelError`` naming the op types and nodes. Shape arithmetic (``Shape`` and the
``Gather``/``Slice``/``Concat``/``Unsqueeze``/``Cast``… that work on its result) is resolved before
conversion by ``shape_plan``: values known from static shapes are folded into constants, and for
traced modules (passes that change the structure) dims that are only known at run time are read
from the tensors as ``x.shape[i]``, which tracing exports as dynamic ``Shape`` ops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from kondense.compression.errors import UnsupportedModelError
from kondense.compression.model_files import ModelSignature, signature_of

ONNX_DOMAINS = ("", "ai.onnx")


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _tensor(value: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(value, copy=True, order="C"))


def _param_array(module: Any, attr: str, transpose: bool, scale: float, shape: tuple[int, ...]) -> np.ndarray:
    value = getattr(module, attr).detach().cpu().numpy()
    value = (value.T if transpose else value) / scale
    return value.reshape(shape) if value.size == int(np.prod(shape)) else value


def _symmetric_padding(pads: Sequence[int], where: str) -> list[int]:
    half = len(pads) // 2
    begin, end = list(pads[:half]), list(pads[half:])
    if begin != end:
        raise UnsupportedModelError(where, f"asymmetric padding {list(pads)} is not supported")
    return begin


# --------------------------------------------------------------------------------------------------
# The module the converters fill in
# --------------------------------------------------------------------------------------------------


class StepError(RuntimeError):
    """A step of an ``OnnxModule`` failed: ``node`` says which ONNX node it runs, ``error`` what torch
    said (e.g. a Reshape whose constant target no longer fits after channels were removed)."""

    def __init__(self, node: str, error: BaseException) -> None:
        said = (str(error).strip().splitlines() or [""])[0][:200]
        super().__init__(f"{node}: {said}")
        self.node, self.said = node, said


class OnnxModule(nn.Module):
    """A program of (input names, output names, function) steps over an environment of tensors."""

    def __init__(self, input_names: list[str], output_names: list[str]) -> None:
        super().__init__()
        self.layers = nn.ModuleDict()
        self.weights = nn.ParameterDict()  # float initializers read by elementwise ops
        self.weight_keys: dict[str, str] = {}  # ONNX name -> key (ParameterDict keys cannot hold dots)
        # (initializer name, current value as the ONNX array) for write_back
        self.sources: list[tuple[str, Callable[[], np.ndarray]]] = []
        self.constants: dict[str, torch.Tensor] = {}
        self.program: list[tuple[list[str], list[str], Callable[..., Any]]] = []
        self.input_names = input_names
        self.output_names = output_names
        # (where, data input) of the Reshapes whose target fixes a channel count (a constant entry
        # other than 0/-1, e.g. attention heads [N, T, 3, 8, 15]): channels reaching them cannot be
        # removed, so structured pruning leaves the layers that produce them whole
        self.fixed_reshapes: list[tuple[str, str]] = []
        self.node_of: dict[str, str] = {}  # output name -> "node <name> (<op>)", for StepError

    def forward(self, *inputs: torch.Tensor) -> Any:
        env: dict[str, Any] = dict(zip(self.input_names, inputs, strict=True))
        env.update(self.constants)
        env.update({name: self.weights[key] for name, key in self.weight_keys.items()})
        for input_names, output_names, fn in self.program:
            try:
                result = fn(*[env[n] if n else None for n in input_names])
            except RuntimeError as exc:  # say which node of the ONNX graph the failing step is
                where = self.node_of.get(output_names[0]) if output_names else None
                if where is None:
                    raise
                raise StepError(where, exc) from exc
            if len(output_names) == 1:
                env[output_names[0]] = result
            else:
                env.update(zip(output_names, result, strict=False))
        outputs = [env[n] for n in self.output_names]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


@dataclass
class NodeBuild:
    """What a converter sees of one node; it may narrow ``ins``/``outs`` (the step's tensors)."""

    node: Any
    index: int
    attrs: dict[str, Any]
    where: str  # "<model>: node <name> (<op>)" for errors
    ins: list[str]
    outs: list[str]
    module: OnnxModule
    initializers: dict[str, np.ndarray]
    nodes: list[Any]
    consumers: dict[str, int]
    fused: set[int]  # indices of later nodes a converter folded into this one

    @property
    def key(self) -> str:
        return f"n{self.index}"

    def constant(self, name: str) -> np.ndarray | None:
        return self.initializers.get(name) if name else None

    def layer(self, layer: nn.Module) -> nn.Module:
        self.module.layers[self.key] = layer
        return layer

    def source(
        self,
        name: str,
        layer: Any,
        attr: str,
        shape: tuple[int, ...],
        *,
        transpose: bool = False,
        scale: float = 1.0,
    ) -> None:
        """``layer.attr`` holds the (possibly transposed/scaled) value of initializer ``name``."""
        self.module.sources.append((name, partial(_param_array, layer, attr, transpose, scale, shape)))

    def refuse(self, problem: str) -> UnsupportedModelError:
        return UnsupportedModelError(self.where, problem)


Converter = Callable[[NodeBuild], Callable[..., Any] | None]
CONVERTERS: dict[str, Converter] = {}


def converter(*ops: str) -> Callable[[Converter], Converter]:
    """Register the decorated function as the converter of ``ops``. It returns the step's function
    (called with the tensors named by ``build.ins``) or None when the node needs no step."""

    def register(fn: Converter) -> Converter:
        for op in ops:
            CONVERTERS[op] = fn
        return fn

    return register


def supported_ops() -> list[str]:
    return sorted(CONVERTERS)


# --------------------------------------------------------------------------------------------------
# Shape arithmetic, resolved before conversion
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dim:
    """Dimension ``axis`` of tensor ``tensor``, read at run time."""

    tensor: str
    axis: int


@dataclass(frozen=True)
class ShapeValue:
    entries: tuple[int | Dim, ...]
    scalar: bool
    dtype: np.dtype[Any]

    @property
    def static(self) -> bool:
        return all(isinstance(e, int) for e in self.entries)

    def array(self) -> np.ndarray:
        values = np.array(self.entries, dtype=self.dtype)
        return values.reshape(()) if self.scalar else values


# Ops whose int results the plan computes; and ops that accept a run-time shape given as a list.
SHAPE_OPS = {"Shape", "Cast", "Gather", "Slice", "Unsqueeze", "Squeeze", "Concat", "Identity"} | {
    "Add", "Sub", "Mul", "Div",
}  # fmt: skip
LIST_CONSUMERS = {"Reshape": 1, "Expand": 1, "ConstantOfShape": 0, "Resize": 3}  # op -> input position
MAX_SHAPE_CONSTANT = 64  # int constants up to this many values take part in shape arithmetic


@dataclass
class ShapePlan:
    """``values``: outputs of shape arithmetic with what they hold; ``dynamic``: shape values that
    hold run-time dims but feed an op that needs a tensor (a traced module cannot export them)."""

    values: dict[str, ShapeValue] = field(default_factory=dict)
    dynamic: list[str] = field(default_factory=list)
    flattens: set[str] = field(default_factory=set)  # outputs of Reshape(x, [x.shape[0], K]) flattens


def _static_shapes(model: Any) -> dict[str, list[int | None]]:
    """Tensor shapes known from ONNX shape inference (``None`` for an unknown dim)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is best effort; without it dims stay run-time
        inferred = model
    shapes: dict[str, list[int | None]] = {}
    graph = inferred.graph
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor_type = info.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[info.name] = [
                # some exporters write -1 for an unknown dim: only positive values are known
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in tensor_type.shape.dim
            ]
    return shapes


def _small_constants(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    found: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        if len(init.dims) <= 1 and int(np.prod(init.dims)) <= MAX_SHAPE_CONSTANT:
            found[init.name] = numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ONNX_DOMAINS:
            value = _constant_value(_attrs(node))
            if value is not None and value.ndim <= 1 and value.size <= MAX_SHAPE_CONSTANT:
                found[node.output[0]] = value
    return found


def _as_shape(value: np.ndarray) -> ShapeValue | None:
    if value.dtype.kind not in "iuf" or value.ndim > 1:
        return None
    return ShapeValue(tuple(value.reshape(-1).tolist()), value.ndim == 0, value.dtype)


def _int_list(value: ShapeValue | None) -> list[int] | None:
    if value is None or not value.static or value.dtype.kind not in "iu":
        return None
    return [int(e) for e in value.entries]  # type: ignore[arg-type]


def _shape_step(
    node: Any, attrs: dict[str, Any], args: list[ShapeValue | None], dims: list[int | Dim] | None
) -> ShapeValue | None:
    """The value of one shape-arithmetic node, or None when it is not computable ahead of time."""
    from onnx import helper

    op = node.op_type
    if op == "Shape":
        if dims is None:
            return None
        start, end = attrs.get("start", 0), attrs.get("end")
        return ShapeValue(tuple(dims[start:end]), False, np.dtype(np.int64))
    if any(a is None for a in args[:1]) or not args:
        return None
    first = args[0]
    assert first is not None
    if op == "Identity":
        return first
    if op == "Cast":
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
        if dtype.kind not in "iu":
            return None
        if first.dtype.kind == "f" and not first.static:
            return None
        cast = tuple(e if isinstance(e, Dim) else int(e) for e in first.entries)
        return ShapeValue(cast, first.scalar, dtype)
    if first.dtype.kind not in "iu":
        return None
    if op == "Gather":
        indices = args[1] if len(args) > 1 else None
        picks = _int_list(indices)
        if first.scalar or picks is None or attrs.get("axis", 0) not in (0, -1):
            return None
        assert indices is not None
        size = len(first.entries)
        if any(not -size <= i < size for i in picks):
            return None
        return ShapeValue(tuple(first.entries[i] for i in picks), indices.scalar, first.dtype)
    if op == "Slice":
        bounds = [_int_list(a) if a is not None else None for a in args[1:]]
        if first.scalar or any(b is None for b in bounds[:2]) or len(bounds[0] or []) != 1:
            return None
        axes, steps = (bounds[2] if len(bounds) > 2 else None), (bounds[3] if len(bounds) > 3 else None)
        if (axes is not None and axes not in ([0], [-1])) or (steps is not None and len(steps) != 1):
            return None
        start, end = bounds[0][0], bounds[1][0]  # type: ignore[index]
        step = steps[0] if steps else 1
        return ShapeValue(tuple(first.entries[slice(start, end, step)]), False, first.dtype)
    if op == "Unsqueeze":
        axes = attrs.get("axes") or (_int_list(args[1]) if len(args) > 1 else None)
        if not first.scalar or axes not in ([0], [-1]):
            return None
        return ShapeValue(first.entries, False, first.dtype)
    if op == "Squeeze":
        if first.scalar or len(first.entries) != 1:
            return None
        return ShapeValue(first.entries, True, first.dtype)
    if op == "Concat":
        if attrs.get("axis", 0) not in (0, -1) or any(a is None or a.scalar for a in args):
            return None
        joined: tuple[int | Dim, ...] = ()
        for part in args:
            assert part is not None
            joined += part.entries
        return ShapeValue(joined, False, first.dtype)
    if op in ("Add", "Sub", "Mul", "Div"):
        other = args[1] if len(args) == 2 else None
        if other is None or not first.static or not other.static or other.dtype.kind not in "iu":
            return None
        left, right = first.array(), other.array()
        if op == "Div":
            if not np.all(right):
                return None
            result = np.trunc(left / right).astype(first.dtype)
        else:
            result = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](left, right).astype(
                first.dtype
            )
        return _as_shape(result)
    return None


def shape_plan(model: Any, *, traceable: bool) -> ShapePlan:
    """Resolve the graph's shape arithmetic.

    Static dims (known from shape inference) are folded; with ``traceable`` every dim is read from
    its tensor at run time instead, since a pass that changes the structure (removes channels)
    also changes the static shapes of the tensors it touched."""
    plan = ShapePlan()
    if not any(n.op_type == "Shape" for n in model.graph.node):
        return plan
    shapes = _static_shapes(model)
    constants = _small_constants(model)

    def value_of(name: str) -> ShapeValue | None:
        if name in plan.values:
            return plan.values[name]
        return _as_shape(constants[name]) if name in constants else None

    for node in model.graph.node:
        if node.op_type not in SHAPE_OPS or node.domain not in ONNX_DOMAINS or len(node.output) != 1:
            continue
        attrs = _attrs(node)
        args = [value_of(n) if n else None for n in node.input]
        if node.op_type != "Shape" and any(n and a is None for n, a in zip(node.input, args, strict=True)):
            continue  # reads a tensor only known at run time
        dims: list[int | Dim] | None = None
        if node.op_type == "Shape":
            known = shapes.get(node.input[0])
            if known is not None:
                dims = [
                    d if (d is not None and not traceable) else Dim(node.input[0], axis)
                    for axis, d in enumerate(known)
                ]
        value = _shape_step(node, attrs, args, dims)
        if value is not None and value.dtype.kind in "iu":
            plan.values[node.output[0]] = value
    # Run-time values must reach only ops that take a shape list (or other shape arithmetic).
    wanted: dict[str, list[str]] = {}
    for node in model.graph.node:
        for position, name in enumerate(node.input):
            value = plan.values.get(name)
            if value is None or value.static or node.output[0] in plan.values:
                continue
            if LIST_CONSUMERS.get(node.op_type) != position:
                wanted.setdefault(name, []).append(node.name or node.op_type)
    for output in model.graph.output:
        value = plan.values.get(output.name)
        if value is not None and not value.static:
            wanted.setdefault(output.name, []).append("graph output")
    plan.dynamic = sorted(wanted)
    if traceable:
        plan.flattens = _flattens(model, plan, shapes)
    return plan


def _flattens(model: Any, plan: ShapePlan, shapes: dict[str, list[int | None]]) -> set[str]:
    """Reshapes to [x.shape[0], K] where K is the product of x's other (static) dims: a flatten.
    Written as such, they stay right when a structured pass removes channels (K would not)."""
    found = set()
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        target, dims = plan.values.get(node.input[1]), shapes.get(node.input[0])
        if target is None or dims is None or len(target.entries) != 2 or len(dims) < 2:
            continue
        batch, size = target.entries
        rest = dims[1:]
        if (
            batch == Dim(node.input[0], 0)
            and isinstance(size, int)
            and all(d is not None for d in rest)
            and int(np.prod([d for d in rest if d is not None])) == size
        ):
            found.add(node.output[0])
    return found


def _runtime_shape(entries: tuple[int | Dim, ...], scalar: bool) -> Callable[..., Any]:
    """A step that reads the shape value's run-time dims from its tensors (as a list, so tracing
    exports ``Shape``/``Gather`` ops instead of freezing the numbers)."""

    def fn(*tensors: torch.Tensor) -> Any:
        by_name = iter(tensors)
        values = [e if isinstance(e, int) else next(by_name).shape[e.axis] for e in entries]
        return values[0] if scalar else values

    return fn


# --------------------------------------------------------------------------------------------------
# Checks and the build loop
# --------------------------------------------------------------------------------------------------


def unsupported_ops(model: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type not in CONVERTERS or node.domain not in ONNX_DOMAINS:
            found.setdefault(node.op_type, []).append(node.name)
    return found


def check_convertible(model: Any, where: str, *, traceable: bool = True) -> ShapePlan:
    """``traceable``: the module will be traced back to ONNX (changed structure). Tracing freezes
    shape arithmetic the plan cannot express as ``x.shape[i]`` reads into constants, so graphs
    with such run-time shape arithmetic can only be trained in place and written back with
    ``write_back``. Returns the shape plan for ``build_module``."""
    bad = unsupported_ops(model)
    plan = shape_plan(model, traceable=traceable)
    if traceable:
        produced = {o: n for n in model.graph.node for o in n.output}
        unresolved = [
            n.name or n.op_type
            for n in model.graph.node
            if n.op_type == "Shape" and n.output[0] not in plan.values
        ]
        unresolved += [produced[name].name or name for name in plan.dynamic if name in produced]
        if unresolved:
            bad["Shape (run-time shape arithmetic; only same-structure passes can handle it)"] = unresolved
    if bad:
        listing = ", ".join(f"{op} ({', '.join(names[:3])})" for op, names in sorted(bad.items()))
        raise UnsupportedModelError(
            where,
            f"op types not supported by the torch training passes: {listing}; "
            f"supported: {', '.join(supported_ops())}",
        )
    return plan


def write_back(module: Any, model: Any, where: str) -> int:
    """Copy the module's trained parameters into the ONNX initializers they came from (same graph,
    same shapes); returns how many initializers were updated."""
    from onnx import numpy_helper

    by_name = {init.name: init for init in model.graph.initializer}
    names = [name for name, _ in module.sources]
    shared = sorted({n for n in names if names.count(n) > 1})
    if shared:
        raise UnsupportedModelError(
            where, f"weights shared by several nodes cannot be written back: {shared[:5]}"
        )
    for name, getter in module.sources:
        original = by_name[name]
        value = np.asarray(getter())
        if tuple(value.shape) != tuple(original.dims):
            raise UnsupportedModelError(
                where, f"{name} changed shape {list(original.dims)} -> {list(value.shape)}"
            )
        dtype = numpy_helper.to_array(original).dtype
        original.CopyFrom(numpy_helper.from_array(value.astype(dtype), name))
    return len(module.sources)


def materialize_identity_initializers(model: Any) -> int:
    """Replace ``Identity(initializer)`` nodes by copies of the initializer (in place).

    torch's exporter deduplicates equal weights (e.g. freshly initialised layer norms) into one
    initializer plus Identity nodes; each layer must own its copy to be trained on its own.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    replaced = [n for n in model.graph.node if n.op_type == "Identity" and n.input[0] in inits]
    for node in replaced:
        copy = numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]), node.output[0])
        model.graph.initializer.append(copy)
        model.graph.node.remove(node)
    return len(replaced)


def _bind_initializers(module: OnnxModule, names: list[str], initializers: dict[str, np.ndarray]) -> None:
    """Initializers a step reads: float tensors become trainable parameters, the rest constants."""
    for name in names:
        value = initializers.get(name) if name else None
        if value is None or name in module.constants or name in module.weight_keys:
            continue
        if value.dtype == np.float32 and value.size > 1:
            key = f"w{len(module.weight_keys)}"
            module.weights[key] = nn.Parameter(_tensor(value))
            module.weight_keys[name] = key
            module.sources.append((name, partial(_param_array, module.weights, key, False, 1.0, value.shape)))
        else:
            module.constants[name] = _tensor(value)


def build_module(model: Any, where: str, *, traceable: bool = True) -> Any:
    """Convert an ONNX model into a trainable torch module (one registered converter per node).

    Identity-shared initializers are materialised in ``model`` first, so ``write_back`` targets the
    same (modified) proto."""
    from onnx import numpy_helper

    plan = check_convertible(model, where, traceable=traceable)
    materialize_identity_initializers(model)
    graph = model.graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    for output in graph.output:
        consumers[output.name] = consumers.get(output.name, 0) + 1
    module = OnnxModule([s.name for s in signature_of(model).inputs], [o.name for o in graph.output])
    nodes = list(graph.node)
    fused: set[int] = set()
    for index, node in enumerate(nodes):
        if index in fused:
            continue
        if node.output[0] in plan.flattens:
            module.program.append(([node.input[0]], [node.output[0]], partial(_flatten, axis=1)))
            continue
        shape_value = plan.values.get(node.output[0]) if len(node.output) == 1 else None
        if shape_value is not None and shape_value.static:
            module.constants[node.output[0]] = _tensor(shape_value.array())  # folded
            continue
        if shape_value is not None and traceable:
            refs = [e.tensor for e in shape_value.entries if isinstance(e, Dim)]
            module.program.append(
                (refs, [node.output[0]], _runtime_shape(shape_value.entries, shape_value.scalar))
            )
            continue
        build = NodeBuild(
            node=node,
            index=index,
            attrs=_attrs(node),
            where=f"{where}: node {node.name or f'n{index}'} ({node.op_type})",
            ins=list(node.input),
            outs=list(node.output),
            module=module,
            initializers=initializers,
            nodes=nodes,
            consumers=consumers,
            fused=fused,
        )
        fn = CONVERTERS[node.op_type](build)
        if fn is None:
            continue
        for name in build.outs:
            module.node_of[name] = f"node {node.name or f'n{index}'} ({node.op_type})"
        if node.op_type == "Reshape" and _fixes_channels(node, plan, initializers, module.constants):
            module.fixed_reshapes.append((build.where, node.input[0]))
        _bind_initializers(module, build.ins, initializers)
        module.program.append((build.ins, build.outs, fn))
    return module


def _fixes_channels(
    node: Any, plan: ShapePlan, initializers: dict[str, np.ndarray], constants: dict[str, torch.Tensor]
) -> bool:
    """Whether a Reshape's target holds a constant dim (other than 0 = copy, -1 = infer, 1): such a
    target stays the same when a structured pass removes channels, so the reshape would break.
    A target computed at run time from other tensors is taken to fix them too (it cannot be seen)."""
    if len(node.input) < 2:
        return True
    target = node.input[1]
    value = plan.values.get(target)
    if value is not None:
        return any(isinstance(e, int) and e not in (0, -1, 1) for e in value.entries)
    known = initializers.get(target)
    if known is None and target in constants:
        known = constants[target].numpy()
    if known is None:
        return True
    return any(int(e) not in (0, -1, 1) for e in np.asarray(known).reshape(-1))


def to_torch(model_path: str | Path, *, traceable: bool = True) -> tuple[Any, ModelSignature]:
    from kondense.compression.model_files import load_model

    model = load_model(model_path)
    return build_module(model, str(model_path), traceable=traceable), signature_of(model)


def export_onnx(module: Any, signature: ModelSignature, example: dict[str, np.ndarray], path: Path) -> None:
    """Trace the module back to ONNX with the same input/output names (and dynamic axes where the
    original had them)."""
    module.eval()
    args = tuple(torch.from_numpy(example[spec.name]) for spec in signature.inputs)
    dynamic_axes: dict[str, dict[int, str]] = {}
    for spec in (*signature.inputs, *signature.outputs):
        # unknown dims, and the -1 some exporters write for them
        axes = {i: f"{spec.name}_dim{i}" for i, d in enumerate(spec.shape) if d is None or d < 0}
        if axes:
            dynamic_axes[spec.name] = axes
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=[s.name for s in signature.inputs],
            output_names=[s.name for s in signature.outputs],
            dynamic_axes=dynamic_axes or None,
            opset_version=17,
            dynamo=False,
        )


# --------------------------------------------------------------------------------------------------
# Converters: layers with weights
# --------------------------------------------------------------------------------------------------


def _conv_common(b: NodeBuild, weight: np.ndarray | None, kind: str) -> tuple[int, dict[str, Any]]:
    if weight is None or weight.ndim not in (3, 4):
        raise b.refuse(f"only 1-D/2-D {kind} with constant weights")
    if _text(b.attrs.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID"):
        raise b.refuse("auto_pad SAME_* is not supported")
    dims = weight.ndim - 2
    kwargs = {
        "stride": tuple(b.attrs.get("strides", [1] * dims)),
        "padding": tuple(_symmetric_padding(b.attrs.get("pads", [0] * 2 * dims), b.where)),
        "dilation": tuple(b.attrs.get("dilations", [1] * dims)),
        "groups": b.attrs.get("group", 1),
        "bias": len(b.ins) > 2 and bool(b.ins[2]),
    }
    if kwargs["bias"] and b.constant(b.ins[2]) is None:
        raise b.refuse(f"{kind} bias must be a constant")
    return dims, kwargs


def _weighted_layer(b: NodeBuild, layer: Any, weight: np.ndarray) -> Callable[..., Any]:
    layer.weight.data = _tensor(weight)
    b.source(b.ins[1], layer, "weight", weight.shape)
    if layer.bias is not None:
        layer.bias.data = _tensor(b.initializers[b.ins[2]])
        b.source(b.ins[2], layer, "bias", tuple(layer.bias.shape))
    b.layer(layer)
    b.ins = b.ins[:1]
    return layer


def _channel_bias(b: NodeBuild, channels: int, dims: int) -> tuple[str, np.ndarray] | None:
    """A per-channel constant added right after a bias-less convolution, as some exporters
    (paddle2onnx) write the conv bias: ``Add(conv, B)`` with B of shape [1, C, 1, 1] (or [C, 1, 1]),
    or ``Add(conv, Reshape(b, [1, C, 1, 1]))``. Fusing it into the layer's bias lets structured
    pruning remove its channels with the layer's. Returns (initializer, value); marks the nodes fused."""
    out = b.outs[0]
    if b.consumers.get(out) != 1:
        return None
    follower = next((j for j in range(b.index + 1, len(b.nodes)) if out in b.nodes[j].input), None)
    if follower is None or b.nodes[follower].op_type != "Add" or len(b.nodes[follower].input) != 2:
        return None
    add = b.nodes[follower]
    other = add.input[1] if add.input[0] == out else add.input[0]
    shapes = {(1, channels, *[1] * dims), (channels, *[1] * dims)}
    fused = [follower]
    value = b.constant(other)
    name = other
    if value is None:  # Reshape(b, constant shape) written just before the Add
        producer = next((j for j in range(b.index + 1, follower) if other in b.nodes[j].output), None)
        if producer is None or b.nodes[producer].op_type != "Reshape" or b.consumers.get(other) != 1:
            return None
        name, target = b.nodes[producer].input[0], b.constant(b.nodes[producer].input[1])
        value = b.constant(name)
        if (
            value is None
            or target is None
            or b.consumers.get(name) != 1
            or tuple(target.tolist()) not in shapes
        ):
            return None
        fused.append(producer)
    elif tuple(value.shape) not in shapes:
        return None
    if value.dtype != np.float32 or value.size != channels:
        return None
    b.fused.update(fused)
    b.outs = list(add.output)
    return name, value


@converter("Conv")
def _conv(b: NodeBuild) -> Callable[..., Any]:
    weight = b.constant(b.ins[1])
    dims, kwargs = _conv_common(b, weight, "convolutions")
    assert weight is not None
    fused_bias = None if kwargs["bias"] else _channel_bias(b, weight.shape[0], dims)
    kwargs["bias"] = kwargs["bias"] or fused_bias is not None
    cls = nn.Conv1d if dims == 1 else nn.Conv2d
    conv = cls(weight.shape[1] * kwargs["groups"], weight.shape[0], tuple(weight.shape[2:]), **kwargs)
    if fused_bias is None:
        return _weighted_layer(b, conv, weight)
    name, bias = fused_bias
    conv.weight.data = _tensor(weight)
    b.source(b.ins[1], conv, "weight", weight.shape)
    assert conv.bias is not None
    conv.bias.data = _tensor(bias.reshape(-1))
    b.source(name, conv, "bias", bias.shape)
    b.layer(conv)
    b.ins = b.ins[:1]
    return conv


@converter("ConvTranspose")
def _conv_transpose(b: NodeBuild) -> Callable[..., Any]:
    weight = b.constant(b.ins[1])
    dims, kwargs = _conv_common(b, weight, "transposed convolutions")
    assert weight is not None
    if "output_shape" in b.attrs:
        raise b.refuse("the output_shape attribute is not supported (give pads and output_padding)")
    kwargs["output_padding"] = tuple(b.attrs.get("output_padding", [0] * dims))
    cls = nn.ConvTranspose1d if dims == 1 else nn.ConvTranspose2d
    conv = cls(weight.shape[0], weight.shape[1] * kwargs["groups"], tuple(weight.shape[2:]), **kwargs)
    return _weighted_layer(b, conv, weight)


def _linear_bias(
    b: NodeBuild, out_features: int, outs: list[str]
) -> tuple[Any, tuple[str, float, tuple[int, ...]] | None]:
    """Gemm's constant C, or the 1-D constant of an ``Add`` that alone follows a MatMul (fused, so
    pruning sees one Linear layer); returns (bias, (initializer, scale, shape))."""
    op, beta = b.node.op_type, float(b.attrs.get("beta", 1.0))
    if op == "Gemm" and len(b.ins) > 2 and b.ins[2]:
        bias = b.constant(b.ins[2])
        if bias is None:
            raise b.refuse("Gemm with a constant weight needs a constant bias")
        return bias * beta, (b.ins[2], beta, bias.shape)
    if op == "MatMul" and b.consumers.get(outs[0]) == 1:
        follower = next((j for j, n in enumerate(b.nodes) if n.op_type == "Add" and outs[0] in n.input), None)
        if follower is not None:
            other = [n for n in b.nodes[follower].input if n != outs[0]]
            value = b.constant(other[0]) if other else None
            if value is not None and value.ndim == 1 and value.shape[0] == out_features:
                b.fused.add(follower)
                b.outs = list(b.nodes[follower].output)
                return value, (other[0], 1.0, value.shape)
    return None, None


def _linear(b: NodeBuild, weight: np.ndarray) -> Callable[..., Any]:
    op = b.node.op_type
    alpha = float(b.attrs.get("alpha", 1.0))
    transposed = not (op == "Gemm" and b.attrs.get("transB", 0))
    matrix = weight.T if transposed else weight  # out x in
    bias, bias_source = _linear_bias(b, matrix.shape[0], b.outs)
    layer = nn.Linear(matrix.shape[1], matrix.shape[0], bias=bias is not None)
    layer.weight.data = _tensor(matrix * alpha)
    b.source(b.ins[1], layer, "weight", weight.shape, transpose=transposed, scale=alpha)
    if bias is not None and bias_source is not None:
        bias = np.broadcast_to(np.asarray(bias, dtype=matrix.dtype).reshape(-1), (matrix.shape[0],))
        layer.bias.data = _tensor(bias)
        name, scale, shape = bias_source
        b.source(name, layer, "bias", shape, scale=scale)
    b.layer(layer)
    b.ins = b.ins[:1]
    return layer


@converter("Gemm")
def _gemm(b: NodeBuild) -> Callable[..., Any]:
    weight = b.constant(b.ins[1])
    t_a, t_b = b.attrs.get("transA", 0), b.attrs.get("transB", 0)
    if weight is not None and weight.ndim == 2 and not t_a:
        return _linear(b, weight)
    alpha, beta = float(b.attrs.get("alpha", 1.0)), float(b.attrs.get("beta", 1.0))

    def gemm(a: Any, w: Any, c: Any = None) -> Any:
        out = alpha * ((a.T if t_a else a) @ (w.T if t_b else w))
        return out if c is None else out + beta * c

    return gemm


@converter("MatMul")
def _matmul(b: NodeBuild) -> Callable[..., Any]:
    weight = b.constant(b.ins[1])
    if weight is not None and weight.ndim == 2:
        return _linear(b, weight)
    return torch.matmul


class AnyRankBatchNorm(nn.BatchNorm1d):
    """One batch norm module for N x C (x ...) inputs of any rank. Applied to a 4-D map as it is
    (no flatten/view around it), it exports as a BatchNormalization the exporter folds into the
    convolution before it, as the base graph had it; the flatten/view added Shape/Reshape per norm
    and kept it unfused (3x slower in ONNX Runtime)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of rank 2 or more (N, C, ...), got rank {input.dim()}")


def _batch_norm(x: Any, norm: Any) -> Any:
    return norm(x)


@converter("BatchNormalization")
def _batch_normalization(b: NodeBuild) -> Callable[..., Any]:
    scale = b.constant(b.ins[1])
    if scale is None or any(b.constant(n) is None for n in b.ins[2:5]):
        raise b.refuse("batch norm parameters must be constants")
    bn = AnyRankBatchNorm(
        scale.shape[0], eps=b.attrs.get("epsilon", 1e-5), momentum=1 - b.attrs.get("momentum", 0.9)
    )
    bn.weight.data, bn.bias.data = _tensor(scale), _tensor(b.initializers[b.ins[2]])
    assert bn.running_mean is not None and bn.running_var is not None
    bn.running_mean.data = _tensor(b.initializers[b.ins[3]])
    bn.running_var.data = _tensor(b.initializers[b.ins[4]])
    b.layer(bn)
    for name, attr in zip(b.ins[1:5], ("weight", "bias", "running_mean", "running_var"), strict=True):
        b.source(name, bn, attr, scale.shape)
    b.ins, b.outs = b.ins[:1], b.outs[:1]
    return partial(_batch_norm, norm=bn)


@converter("LayerNormalization")
def _layer_normalization(b: NodeBuild) -> Callable[..., Any]:
    scale = b.constant(b.ins[1])
    axis = b.attrs.get("axis", -1)
    if scale is None or axis >= 0 or scale.ndim != -axis:
        raise b.refuse(
            "only layer norms over the last axes (negative axis) with a constant scale of those axes"
        )
    bias = b.constant(b.ins[2]) if len(b.ins) > 2 and b.ins[2] else None
    if len(b.ins) > 2 and b.ins[2] and bias is None:
        raise b.refuse("the layer norm bias must be a constant")
    ln = nn.LayerNorm(list(scale.shape), eps=b.attrs.get("epsilon", 1e-5), bias=bias is not None)
    ln.weight.data = _tensor(scale)
    b.source(b.ins[1], ln, "weight", scale.shape)
    if ln.bias is not None and bias is not None:
        ln.bias.data = _tensor(np.broadcast_to(bias, scale.shape))
        b.source(b.ins[2], ln, "bias", bias.shape)
    b.layer(ln)
    b.ins, b.outs = b.ins[:1], b.outs[:1]
    return ln


@converter("PRelu")
def _prelu(b: NodeBuild) -> Callable[..., Any]:
    slope = b.constant(b.ins[1])
    if slope is not None and slope.size > 1:
        # per-channel slopes stored as [C] or [C, 1, 1]: one trainable nn.PReLU
        channels = slope.size
        if slope.shape not in ((channels,), (channels, 1), (channels, 1, 1), (channels, 1, 1, 1)):
            raise b.refuse(f"PRelu slope of shape {list(slope.shape)} is not per-channel")
        prelu = nn.PReLU(channels)
        prelu.weight.data = _tensor(slope.reshape(-1))
        b.source(b.ins[1], prelu, "weight", slope.shape)
        b.layer(prelu)
        b.ins = b.ins[:1]
        return prelu
    return lambda x, s: torch.where(x >= 0, x, x * s)


def _embedding(indices: Any, table: Any) -> Any:
    return table(indices.long())


@converter("Gather")
def _gather(b: NodeBuild) -> Callable[..., Any]:
    table = b.constant(b.ins[0])
    axis = b.attrs.get("axis", 0)
    if table is not None and table.ndim == 2 and axis == 0 and table.dtype == np.float32:
        emb = nn.Embedding(table.shape[0], table.shape[1])
        emb.weight.data = _tensor(table)
        b.source(b.ins[0], emb, "weight", table.shape)
        b.layer(emb)
        b.ins = b.ins[1:]
        return partial(_embedding, table=emb)

    def gather(data: Any, idx: Any) -> Any:
        idx = torch.as_tensor(idx).long()
        idx = torch.where(idx < 0, idx + data.shape[axis], idx)
        picked = torch.index_select(data, axis, idx.reshape(-1))
        return picked.reshape((*data.shape[:axis], *idx.shape, *data.shape[axis + 1 :]))

    return gather


# --------------------------------------------------------------------------------------------------
# Converters: elementwise and activations
# --------------------------------------------------------------------------------------------------


def _identity(x: Any, *_: Any) -> Any:
    return x


UNARY: dict[str, Callable[..., Any]] = {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf,
    "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg, "Abs": torch.abs,
    "Reciprocal": torch.reciprocal, "Identity": _identity, "Floor": torch.floor, "Ceil": torch.ceil,
    "Sin": torch.sin, "Cos": torch.cos, "Sign": torch.sign, "Not": torch.logical_not,
    "Softplus": functional.softplus, "Softsign": functional.softsign, "Mish": functional.mish,
}  # fmt: skip
BINARY: dict[str, Callable[..., Any]] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Pow": torch.pow,
    "Equal": torch.eq, "Greater": torch.gt, "Less": torch.lt, "GreaterOrEqual": torch.ge,
    "LessOrEqual": torch.le, "Where": torch.where, "And": torch.logical_and, "Or": torch.logical_or,
}  # fmt: skip


@converter(*UNARY)
def _unary(b: NodeBuild) -> Callable[..., Any]:
    return UNARY[b.node.op_type]


@converter("Dropout")
def _dropout(b: NodeBuild) -> Callable[..., Any]:
    b.ins, b.outs = b.ins[:1], b.outs[:1]
    return _identity


@converter(*BINARY)
def _binary(b: NodeBuild) -> Callable[..., Any]:
    op = b.node.op_type
    if op == "Div" and all((value := b.constant(n)) is not None and value.dtype.kind in "iu" for n in b.ins):
        return torch.floor_divide
    return BINARY[op]


def _variadic(reduce: Callable[[Any, Any], Any], mean: bool, *xs: Any) -> Any:
    out = xs[0]
    for x in xs[1:]:
        out = reduce(out, x)
    return out / len(xs) if mean else out


@converter("Max", "Min", "Sum", "Mean")
def _max_min_sum_mean(b: NodeBuild) -> Callable[..., Any]:
    op = b.node.op_type
    reducers: dict[str, Callable[[Any, Any], Any]] = {
        "Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add, "Mean": torch.add,
    }  # fmt: skip
    reduce = reducers[op]
    return partial(_variadic, reduce, op == "Mean")


@converter("LeakyRelu")
def _leaky_relu(b: NodeBuild) -> Callable[..., Any]:
    return partial(functional.leaky_relu, negative_slope=b.attrs.get("alpha", 0.01))


@converter("Elu")
def _elu(b: NodeBuild) -> Callable[..., Any]:
    return partial(functional.elu, alpha=b.attrs.get("alpha", 1.0))


@converter("Selu")
def _selu(b: NodeBuild) -> Callable[..., Any]:
    alpha, gamma = (
        b.attrs.get("alpha", 1.67326319217681884765625),
        b.attrs.get("gamma", 1.05070102214813232421875),
    )
    return lambda x: gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


@converter("Gelu")
def _gelu(b: NodeBuild) -> Callable[..., Any]:
    return partial(functional.gelu, approximate=_text(b.attrs.get("approximate", "none")))


class _HardSigmoid(torch.autograd.Function):
    """``clamp(alpha * x + beta, 0, 1)`` that exports as one ``HardSigmoid`` node with these
    attributes (``symbolic``, torch's documented hook for custom ops): written out as Mul/Add/Clip, a
    pruned MobileNet ran slower in ONNX Runtime than its unpruned base."""

    @staticmethod
    def forward(ctx: Any, x: Any, alpha: float, beta: float) -> Any:
        linear = alpha * x + beta
        ctx.save_for_backward((linear >= 0) & (linear <= 1))  # as clamp: ends included
        ctx.alpha = alpha
        return linear.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype) * ctx.alpha, None, None

    @staticmethod
    def symbolic(g: Any, x: Any, alpha: float, beta: float) -> Any:
        return g.op("HardSigmoid", x, alpha_f=alpha, beta_f=beta)


def _hard_sigmoid(x: Any, alpha: float, beta: float) -> Any:
    return _HardSigmoid.apply(x, alpha, beta)


@converter("HardSigmoid")
def _hard_sigmoid_op(b: NodeBuild) -> Callable[..., Any]:
    return partial(
        _hard_sigmoid, alpha=float(b.attrs.get("alpha", 0.2)), beta=float(b.attrs.get("beta", 0.5))
    )


@converter("HardSwish")
def _hard_swish(b: NodeBuild) -> Callable[..., Any]:
    return functional.hardswish


def _clip(x: Any, low: Any = None, high: Any = None) -> Any:
    return torch.clamp(x, low, high)


@converter("Clip")
def _clip_op(b: NodeBuild) -> Callable[..., Any]:
    if "min" in b.attrs or "max" in b.attrs:  # opset < 11: bounds are attributes
        return partial(_clip, low=b.attrs.get("min"), high=b.attrs.get("max"))
    return _clip


@converter("Softmax", "LogSoftmax")
def _softmax(b: NodeBuild) -> Callable[..., Any]:
    fn = torch.softmax if b.node.op_type == "Softmax" else torch.log_softmax
    return partial(fn, dim=b.attrs.get("axis", -1))


# --------------------------------------------------------------------------------------------------
# Converters: pooling and resizing
# --------------------------------------------------------------------------------------------------


@converter("MaxPool", "AveragePool")
def _pool(b: NodeBuild) -> Callable[..., Any]:
    op = b.node.op_type
    kernel = b.attrs["kernel_shape"]
    dims = len(kernel)
    if _text(b.attrs.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID"):
        raise b.refuse("auto_pad SAME_* is not supported")
    pool = getattr(functional, f"{'max' if op == 'MaxPool' else 'avg'}_pool{dims}d")
    kwargs = {
        "kernel_size": kernel,
        "stride": b.attrs.get("strides", kernel),
        "padding": _symmetric_padding(b.attrs.get("pads", [0] * 2 * dims), b.where),
        "ceil_mode": bool(b.attrs.get("ceil_mode", 0)),
    }
    if op == "AveragePool":
        kwargs["count_include_pad"] = bool(b.attrs.get("count_include_pad", 0))
    elif any(d != 1 for d in b.attrs.get("dilations", [1] * dims)):
        kwargs["dilation"] = b.attrs["dilations"]
    b.outs = b.outs[:1]
    return partial(pool, **kwargs)


def _global_average_pool(x: Any) -> Any:
    if x.dim() in (3, 4):  # exports as GlobalAveragePool, not ReduceMean
        pool = functional.adaptive_avg_pool1d if x.dim() == 3 else functional.adaptive_avg_pool2d
        return pool(x, 1)
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def _global_max_pool(x: Any) -> Any:
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(b: NodeBuild) -> Callable[..., Any]:
    return _global_average_pool if b.node.op_type == "GlobalAveragePool" else _global_max_pool


def _resize_mode(b: NodeBuild) -> tuple[str, bool | None]:
    """(torch interpolate mode, align_corners) equivalent to the node's attributes."""
    mode = _text(b.attrs.get("mode", "nearest"))
    transform = _text(b.attrs.get("coordinate_transformation_mode", "half_pixel"))
    nearest = _text(b.attrs.get("nearest_mode", "round_prefer_floor"))
    if b.attrs.get("antialias", 0) or _text(b.attrs.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
        raise b.refuse("antialias and keep_aspect_ratio_policy are not supported")
    if mode == "nearest":
        if transform == "asymmetric" and nearest == "floor":
            return "nearest", None
        if transform in ("half_pixel", "pytorch_half_pixel") and nearest == "round_prefer_ceil":
            return "nearest-exact", None
        raise b.refuse(
            f"nearest resize with {transform}/{nearest} has no torch equivalent "
            "(supported: asymmetric/floor, half_pixel/round_prefer_ceil)"
        )
    if mode == "linear":
        if transform in ("half_pixel", "pytorch_half_pixel"):
            return "linear", False
        if transform == "align_corners":
            return "linear", True
        raise b.refuse(f"linear resize with {transform} coordinates is not supported")
    raise b.refuse(f"resize mode {mode!r} is not supported (nearest, linear)")


def _resize(
    x: Any, roi: Any = None, scales: Any = None, sizes: Any = None, *, mode: str, align: bool | None
) -> Any:
    spatial = x.dim() - 2
    if mode == "linear":
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial]
    if sizes is not None and len(sizes) > 0:
        size = [sizes[i] if isinstance(sizes, list) else int(sizes[i]) for i in range(2, x.dim())]
        return functional.interpolate(x, size=size, mode=mode, align_corners=align)
    factors = [float(s) for s in scales[2:]]
    return functional.interpolate(
        x, scale_factor=factors, mode=mode, align_corners=align, recompute_scale_factor=False
    )


@converter("Resize")
def _resize_op(b: NodeBuild) -> Callable[..., Any]:
    if len(b.ins) < 3:
        raise b.refuse("opset-10 Resize (X, scales) is not supported: upgrade the model to opset 11 or later")
    mode, align = _resize_mode(b)
    scales = b.constant(b.ins[2])
    if scales is not None and scales.size and (scales[:2] != 1).any():
        raise b.refuse(
            f"only spatial resizing is supported (batch and channel scales are {scales[:2].tolist()})"
        )
    for name in b.ins[1:]:  # roi, scales, sizes: settings, never trainable weights
        value = b.constant(name)
        if value is not None:
            b.module.constants[name] = _tensor(value)
    return partial(_resize, mode=mode, align=align)


# --------------------------------------------------------------------------------------------------
# Converters: shapes and layout
# --------------------------------------------------------------------------------------------------


def _flatten(x: Any, axis: int) -> Any:
    # torch's flatten only (no int(prod(x.shape[:axis])), which tracing would freeze at the example's
    # batch and sequence length: an OCR recogniser's [N, T, C] -> [N*T, C] then failed at other widths)
    axis = axis % x.dim() if axis < 0 else axis
    if axis == 1:
        return x.flatten(1)
    if axis in (0, x.dim()):
        return x.flatten().unsqueeze(1 if axis else 0)
    return x.flatten(axis).flatten(0, axis - 1)


@converter("Flatten")
def _flatten_op(b: NodeBuild) -> Callable[..., Any]:
    return partial(_flatten, axis=b.attrs.get("axis", 1))


def _dims(shape: Any) -> list[Any]:
    """A shape given as a tensor (ints) or as a run-time list (kept as is for tracing)."""
    return list(shape) if isinstance(shape, list) else [int(v) for v in shape]


@converter("Reshape")
def _reshape(b: NodeBuild) -> Callable[..., Any]:
    allowzero = b.attrs.get("allowzero", 0)

    def reshape(x: Any, shape: Any) -> Any:
        dims = _dims(shape)
        if not allowzero:
            dims = [x.shape[i] if isinstance(d, int) and d == 0 else d for i, d in enumerate(dims)]
        return x.reshape(dims)

    return reshape


def _transpose(x: Any, perm: list[int] | None) -> Any:
    return x.permute(*perm) if perm else x.permute(*reversed(range(x.dim())))


@converter("Transpose")
def _transpose_op(b: NodeBuild) -> Callable[..., Any]:
    return partial(_transpose, perm=b.attrs.get("perm"))


def _concat(*xs: Any, axis: int) -> Any:
    return torch.cat([torch.as_tensor(x) for x in xs], axis)


@converter("Concat")
def _concat_op(b: NodeBuild) -> Callable[..., Any]:
    return partial(_concat, axis=b.attrs["axis"])


@converter("Unsqueeze", "Squeeze")
def _squeeze(b: NodeBuild) -> Callable[..., Any]:
    op, attr_axes = b.node.op_type, b.attrs.get("axes")

    def fn(x: Any, axes: Any = None) -> Any:
        given = attr_axes if attr_axes is not None else (axes if axes is not None else [])
        chosen = [int(a) for a in given]
        if op == "Squeeze":
            return x.squeeze(tuple(chosen)) if chosen else x.squeeze()
        for axis in sorted(a % (x.dim() + len(chosen)) for a in chosen):
            x = x.unsqueeze(axis)
        return x

    return fn


def _shape(x: Any, start: int, end: int | None) -> Any:
    return torch.tensor(x.shape[start:end], dtype=torch.int64)


@converter("Shape")
def _shape_op(b: NodeBuild) -> Callable[..., Any]:
    return partial(_shape, start=b.attrs.get("start", 0), end=b.attrs.get("end"))


def _cast(x: Any, dtype: Any) -> Any:
    return torch.as_tensor(x).to(dtype)


@converter("Cast")
def _cast_op(b: NodeBuild) -> Callable[..., Any]:
    from onnx import helper

    np_type = helper.tensor_dtype_to_np_dtype(b.attrs["to"])
    return partial(_cast, dtype=torch.from_numpy(np.zeros(1, dtype=np_type)).dtype)


def _l2(x: Any, dim: Any = None, keepdim: bool = False) -> Any:
    return torch.linalg.vector_norm(x, dim=dim, keepdim=keepdim)


def _amax(x: Any, dim: Any = None, keepdim: bool = False) -> Any:
    return torch.amax(x, dim=dim if dim is not None else tuple(range(x.dim())), keepdim=keepdim)


def _amin(x: Any, dim: Any = None, keepdim: bool = False) -> Any:
    return torch.amin(x, dim=dim if dim is not None else tuple(range(x.dim())), keepdim=keepdim)


REDUCERS: dict[str, Callable[..., Any]] = {
    "ReduceMean": torch.mean, "ReduceSum": torch.sum, "ReduceL2": _l2, "ReduceMax": _amax, "ReduceMin": _amin,
}  # fmt: skip


@converter(*REDUCERS)
def _reduce(b: NodeBuild) -> Callable[..., Any]:
    attr_axes, keep, reducer = b.attrs.get("axes"), bool(b.attrs.get("keepdims", 1)), REDUCERS[b.node.op_type]
    # ReduceSum (opset 13) and the other reductions (opset 18) take ``axes`` as an input and say with
    # ``noop_with_empty_axes`` what no/empty axes mean: 1 = the input unchanged, 0 = reduce every axis.
    noop = bool(b.attrs.get("noop_with_empty_axes", 0))

    def reduce(x: Any, axes: Any = None) -> Any:
        chosen = attr_axes if attr_axes is not None else (None if axes is None else [int(a) for a in axes])
        if chosen:
            return reducer(x, dim=tuple(chosen), keepdim=keep)
        if noop:
            return x
        if keep:
            return reducer(x, dim=tuple(range(x.dim())), keepdim=True)
        return reducer(x)

    return reduce


def _constant_value(attrs: dict[str, Any]) -> np.ndarray | None:
    from onnx import numpy_helper

    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return np.array(list(attrs[key]), dtype=dtype)
    return None


@converter("Constant")
def _constant(b: NodeBuild) -> None:
    value = _constant_value(b.attrs)
    if value is None:
        raise b.refuse("only value/value_float(s)/value_int(s) constants are supported")
    b.module.constants[b.outs[0]] = _tensor(value)
    return None


@converter("Slice")
def _slice(b: NodeBuild) -> Callable[..., Any]:
    def slice_(x: Any, starts: Any, ends: Any, axes: Any = None, steps: Any = None) -> Any:
        index = [slice(None)] * x.dim()
        axes = range(len(starts)) if axes is None else axes
        steps = [1] * len(starts) if steps is None else steps
        backwards: list[tuple[int, slice]] = []
        for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
            size = x.shape[int(a)]
            bounds = slice(max(min(int(s), size), -size), max(min(int(e), size), -size - 1), int(st))
            if int(st) < 0:  # torch slicing has no negative step: pick those indices instead
                backwards.append((int(a), slice(int(s), int(e), int(st))))
                continue
            index[int(a)] = bounds
        x = x[tuple(index)]
        for axis, backward in backwards:
            picked = list(range(*backward.indices(x.shape[axis])))
            x = torch.index_select(x, axis, torch.tensor(picked, dtype=torch.int64))
        return x

    return slice_


def _expand(x: Any, shape: Any) -> Any:
    return x * torch.ones(_dims(shape), dtype=x.dtype)


@converter("Expand")
def _expand_op(b: NodeBuild) -> Callable[..., Any]:
    return _expand


def _constant_of_shape(shape: Any, fill: Any) -> Any:
    return fill.reshape(()).expand(_dims(shape)).clone()


@converter("ConstantOfShape")
def _constant_of_shape_op(b: NodeBuild) -> Callable[..., Any]:
    value = _constant_value(b.attrs)
    return partial(_constant_of_shape, fill=_tensor(value if value is not None else np.zeros(1, np.float32)))


@converter("Range")
def _range(b: NodeBuild) -> Callable[..., Any]:
    return torch.arange


@converter("Split")
def _split(b: NodeBuild) -> Callable[..., Any]:
    axis, attr_split, count = b.attrs.get("axis", 0), b.attrs.get("split"), len(b.outs)

    def split(x: Any, sizes: Any = None) -> Any:
        given = attr_split if attr_split is not None else sizes
        if given is None or len(given) == 0:
            size = x.shape[axis]
            chunk = -(-size // count)  # ONNX: equal parts, the last one smaller
            return torch.split(x, chunk, dim=axis)
        return torch.split(x, [int(s) for s in given], dim=axis)

    return split


@converter("Tile")
def _tile(b: NodeBuild) -> Callable[..., Any]:
    return lambda x, repeats: x.repeat(*[int(r) for r in repeats])


@converter("Pad")
def _pad(b: NodeBuild) -> Callable[..., Any]:
    mode = _text(b.attrs.get("mode", "constant"))
    if mode not in ("constant", "reflect", "edge"):
        raise b.refuse(f"pad mode {mode!r} is not supported (constant, reflect, edge)")
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode]
    attr_pads, attr_value = b.attrs.get("pads"), float(b.attrs.get("value", 0.0))

    def pad(x: Any, pads: Any = None, value: Any = None, axes: Any = None) -> Any:
        given = [int(p) for p in (attr_pads if attr_pads is not None else pads)]
        rank = x.dim()
        chosen = [int(a) % rank for a in axes] if axes is not None else list(range(rank))
        half = len(given) // 2
        begin = dict(zip(chosen, given[:half], strict=True))
        end = dict(zip(chosen, given[half:], strict=True))
        torch_pads: list[int] = []
        for axis in reversed(range(rank)):  # torch: last axis first, (begin, end) pairs
            torch_pads += [begin.get(axis, 0), end.get(axis, 0)]
        while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
            torch_pads = torch_pads[:-2]
        if torch_mode != "constant":
            return functional.pad(x, torch_pads, mode=torch_mode)
        fill = attr_value if value is None else float(value)
        return functional.pad(x, torch_pads, mode="constant", value=fill)

    return pad

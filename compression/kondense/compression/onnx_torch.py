"""A small ONNX → torch converter for the models the training passes handle (CNNs, MLPs and the
elementwise/shape ops around them), and the torch → ONNX export back.

Why not onnx2torch: it imports torchvision at import time, and the torchvision wheel PyPI serves is
a CUDA build that cannot load against the CPU torch this project pins. Weighted ops become real
``nn.Conv*``/``nn.Linear``/``nn.BatchNorm*``/``nn.LayerNorm``/``nn.Embedding`` modules, so
torch-pruning and ``torch.nn.utils.prune`` see ordinary layers. An op outside the table below is a
clear ``UnsupportedModelError`` naming the op types and nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from kondense.compression.errors import UnsupportedModelError
from kondense.compression.model_files import ModelSignature, signature_of

ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Equal", "Greater", "Less", "Where", "Max", "Min"}
UNARY = {
    "Relu",
    "Sigmoid",
    "Tanh",
    "Erf",
    "Sqrt",
    "Exp",
    "Log",
    "Neg",
    "Abs",
    "Reciprocal",
    "Identity",
    "Dropout",
}
SUPPORTED_OPS = ELEMENTWISE | UNARY | {
    "Conv", "Gemm", "MatMul", "BatchNormalization", "LayerNormalization", "Gather", "LeakyRelu", "Elu",
    "Gelu", "Softmax", "LogSoftmax", "Flatten", "Reshape", "Transpose", "MaxPool", "AveragePool",
    "GlobalAveragePool", "Concat", "Unsqueeze", "Squeeze", "Cast", "ReduceMean", "ReduceSum",
    "ReduceL2", "Clip", "Constant", "Slice", "Expand", "ConstantOfShape", "Range", "Shape",
}  # fmt: skip


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def unsupported_ops(model: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type not in SUPPORTED_OPS or node.domain not in ("", "ai.onnx"):
            found.setdefault(node.op_type, []).append(node.name)
    return found


def check_convertible(model: Any, where: str, *, traceable: bool = True) -> None:
    """``traceable``: the module will be traced back to ONNX (changed structure). Tracing would
    freeze run-time shape arithmetic into constants, so graphs that compute shapes (Shape ops) can
    only be trained in place and written back with ``write_back``."""
    bad = unsupported_ops(model)
    shapes = [n.name for n in model.graph.node if n.op_type == "Shape"]
    if traceable and shapes:
        bad["Shape (run-time shape arithmetic; only same-structure passes can handle it)"] = shapes
    if bad:
        listing = ", ".join(f"{op} ({', '.join(names[:3])})" for op, names in sorted(bad.items()))
        raise UnsupportedModelError(where, f"op types not supported by the torch training passes: {listing}")


def _flatten(x: Any, axis: int) -> Any:
    return x.flatten(1) if axis == 1 else x.reshape(int(np.prod(x.shape[:axis])), -1)


def _transpose(x: Any, perm: list[int] | None) -> Any:
    return x.permute(*perm) if perm else x.permute(*reversed(range(x.dim())))


def _expand(x: Any, shape: Any) -> Any:
    import torch

    return x * torch.ones([int(v) for v in shape], dtype=x.dtype)


def _constant_of_shape(shape: Any, fill: Any) -> Any:
    return fill.reshape(()).expand([int(v) for v in shape]).clone()


def _global_average_pool(x: Any) -> Any:
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def _concat(*xs: Any, axis: int) -> Any:
    import torch

    return torch.cat([torch.as_tensor(x) for x in xs], axis)


def _shape(x: Any, start: int, end: int | None) -> Any:
    import torch

    return torch.tensor(x.shape[start:end], dtype=torch.int64)


def _cast(x: Any, dtype: Any) -> Any:
    import torch

    return torch.as_tensor(x).to(dtype)


def _identity(x: Any, *_: Any) -> Any:
    return x


def _batch_norm(x: Any, norm: Any) -> Any:
    # BatchNorm1d takes N x C x L: flatten spatial dims so one module covers 1-D and 2-D maps.
    return norm(x.flatten(2)).view_as(x) if x.dim() > 3 else norm(x)


def _embedding(indices: Any, table: Any) -> Any:
    return table(indices.long())


def _symmetric_padding(pads: Sequence[int], where: str) -> list[int]:
    half = len(pads) // 2
    begin, end = list(pads[:half]), list(pads[half:])
    if begin != end:
        raise UnsupportedModelError(where, f"asymmetric padding {list(pads)} is not supported")
    return begin


def _param_array(module: Any, attr: str, transpose: bool, scale: float, shape: tuple[int, ...]) -> np.ndarray:
    value = getattr(module, attr).detach().cpu().numpy()
    value = (value.T if transpose else value) / scale
    return value.reshape(shape) if value.size == int(np.prod(shape)) else value


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


def build_module(model: Any, where: str, *, traceable: bool = True) -> Any:
    """Convert an ONNX model (already checked) into a trainable torch module.

    Identity-shared initializers are materialised in ``model`` first, so ``write_back`` targets the
    same (modified) proto."""
    import torch
    from onnx import numpy_helper
    from torch import nn

    check_convertible(model, where, traceable=traceable)
    materialize_identity_initializers(model)
    graph = model.graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    for output in graph.output:
        consumers[output.name] = consumers.get(output.name, 0) + 1

    class OnnxModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleDict()
            self.weights = nn.ParameterDict()  # float initializers read by elementwise ops
            self.weight_keys: dict[str, str] = {}  # ONNX name -> key (ParameterDict keys cannot hold dots)
            # (initializer name, current value as the ONNX array) for write_back
            self.sources: list[tuple[str, Callable[[], np.ndarray]]] = []
            self.constants: dict[str, torch.Tensor] = {}
            self.program: list[tuple[list[str], list[str], Callable[..., Any]]] = []
            self.input_names = [s.name for s in signature_of(model).inputs]
            self.output_names = [o.name for o in graph.output]

        def forward(self, *inputs: torch.Tensor) -> Any:
            env: dict[str, Any] = dict(zip(self.input_names, inputs, strict=True))
            env.update(self.constants)
            env.update({name: self.weights[key] for name, key in self.weight_keys.items()})
            for input_names, output_names, fn in self.program:
                result = fn(*[env[n] if n else None for n in input_names])
                if len(output_names) == 1:
                    env[output_names[0]] = result
                else:
                    env.update(zip(output_names, result, strict=False))
            outputs = [env[n] for n in self.output_names]
            return outputs[0] if len(outputs) == 1 else tuple(outputs)

    module = OnnxModule()

    def constant(name: str) -> np.ndarray | None:
        return initializers.get(name)

    def tensor(value: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(value, copy=True, order="C"))

    fused_adds: set[int] = set()
    nodes = list(graph.node)

    for index, node in enumerate(nodes):
        if index in fused_adds:
            continue
        op, attrs, key = node.op_type, _attrs(node), f"n{index}"
        node_where = f"{where}: node {node.name or key} ({op})"
        ins, outs = list(node.input), list(node.output)
        fn: Callable[..., Any]

        weight = constant(ins[1]) if len(ins) > 1 else None
        table = constant(ins[0]) if op == "Gather" else None
        if op == "Conv":
            if weight is None or weight.ndim not in (3, 4):
                raise UnsupportedModelError(node_where, "only 1-D/2-D convolutions with constant weights")
            if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
                raise UnsupportedModelError(node_where, "auto_pad SAME_* is not supported")
            dims = weight.ndim - 2
            conv_cls = nn.Conv1d if dims == 1 else nn.Conv2d
            groups = attrs.get("group", 1)
            conv = conv_cls(
                weight.shape[1] * groups,
                weight.shape[0],
                tuple(weight.shape[2:]),
                stride=tuple(attrs.get("strides", [1] * dims)),
                padding=tuple(_symmetric_padding(attrs.get("pads", [0] * 2 * dims), node_where)),  # type: ignore[arg-type]
                dilation=tuple(attrs.get("dilations", [1] * dims)),
                groups=groups,
                bias=len(ins) > 2 and bool(ins[2]),
            )
            conv.weight.data = tensor(weight)
            module.sources.append((ins[1], partial(_param_array, conv, "weight", False, 1.0, weight.shape)))
            if conv.bias is not None:
                conv.bias.data = tensor(initializers[ins[2]])
                module.sources.append(
                    (ins[2], partial(_param_array, conv, "bias", False, 1.0, conv.bias.shape))
                )
            module.layers[key] = conv
            fn, ins = conv, ins[:1]
        elif (
            op in ("Gemm", "MatMul")
            and weight is not None
            and weight.ndim == 2
            and (op == "MatMul" or not attrs.get("transA", 0))
        ):
            alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
            matrix = weight if (op == "Gemm" and attrs.get("transB", 0)) else weight.T  # out x in
            bias = (
                initializers[ins[2]] * beta
                if op == "Gemm" and len(ins) > 2 and ins[2] in initializers
                else None
            )
            if op == "Gemm" and len(ins) > 2 and ins[2] and bias is None:
                raise UnsupportedModelError(node_where, "Gemm with a constant weight needs a constant bias")
            bias_source = (ins[2], beta, initializers[ins[2]].shape) if bias is not None else None
            # MatMul + Add(1-D constant) is a Linear with bias: fuse so pruning sees one layer.
            if op == "MatMul" and consumers.get(outs[0]) == 1:
                follower = next(
                    (j for j, n in enumerate(nodes) if n.op_type == "Add" and outs[0] in n.input), None
                )
                if follower is not None:
                    other = [n for n in nodes[follower].input if n != outs[0]]
                    value = constant(other[0]) if other else None
                    if value is not None and value.ndim == 1 and value.shape[0] == matrix.shape[0]:
                        bias = value
                        bias_source = (other[0], 1.0, value.shape)
                        fused_adds.add(follower)
                        outs = list(nodes[follower].output)
            layer = nn.Linear(matrix.shape[1], matrix.shape[0], bias=bias is not None)
            layer.weight.data = tensor(matrix * alpha)
            transposed = not (op == "Gemm" and attrs.get("transB", 0))
            module.sources.append(
                (ins[1], partial(_param_array, layer, "weight", transposed, alpha, weight.shape))
            )
            if bias is not None and bias_source is not None:
                bias = np.broadcast_to(np.asarray(bias, dtype=matrix.dtype).reshape(-1), (matrix.shape[0],))
                layer.bias.data = tensor(bias)
                bias_name, bias_scale, bias_shape = bias_source
                module.sources.append(
                    (bias_name, partial(_param_array, layer, "bias", False, bias_scale, bias_shape))
                )
            module.layers[key] = layer
            fn, ins = layer, ins[:1]
        elif op == "Gemm":
            t_a, t_b = attrs.get("transA", 0), attrs.get("transB", 0)
            alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))

            def fn(
                a: Any,
                b: Any,
                c: Any = None,
                t_a: int = t_a,
                t_b: int = t_b,
                al: float = alpha,
                be: float = beta,
            ) -> Any:
                out = al * ((a.T if t_a else a) @ (b.T if t_b else b))
                return out if c is None else out + be * c
        elif op == "MatMul":
            fn = torch.matmul
        elif op == "BatchNormalization":
            scale = constant(ins[1])
            if scale is None or any(constant(n) is None for n in ins[2:5]):
                raise UnsupportedModelError(node_where, "batch norm parameters must be constants")
            bn = nn.BatchNorm1d(
                scale.shape[0], eps=attrs.get("epsilon", 1e-5), momentum=1 - attrs.get("momentum", 0.9)
            )
            bn.weight.data, bn.bias.data = tensor(scale), tensor(initializers[ins[2]])
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.data, bn.running_var.data = (
                tensor(initializers[ins[3]]),
                tensor(initializers[ins[4]]),
            )
            module.layers[key] = bn
            for name, attr in zip(ins[1:5], ("weight", "bias", "running_mean", "running_var"), strict=True):
                module.sources.append((name, partial(_param_array, bn, attr, False, 1.0, scale.shape)))
            fn, ins = partial(_batch_norm, norm=bn), ins[:1]
        elif op == "LayerNormalization":
            scale = constant(ins[1])
            if scale is None or attrs.get("axis", -1) != -1:
                raise UnsupportedModelError(node_where, "only last-axis layer norm with constant scale")
            ln = nn.LayerNorm(
                scale.shape[0], eps=attrs.get("epsilon", 1e-5), bias=len(ins) > 2 and bool(ins[2])
            )
            ln.weight.data = tensor(scale)
            module.sources.append((ins[1], partial(_param_array, ln, "weight", False, 1.0, scale.shape)))
            if ln.bias is not None:
                ln.bias.data = tensor(initializers[ins[2]])
                module.sources.append((ins[2], partial(_param_array, ln, "bias", False, 1.0, scale.shape)))
            module.layers[key] = ln
            fn, ins, outs = ln, ins[:1], outs[:1]
        elif (
            op == "Gather"
            and table is not None
            and table.ndim == 2
            and attrs.get("axis", 0) == 0
            and table.dtype == np.float32
        ):
            emb = nn.Embedding(table.shape[0], table.shape[1])
            emb.weight.data = tensor(table)
            module.sources.append((ins[0], partial(_param_array, emb, "weight", False, 1.0, table.shape)))
            module.layers[key] = emb
            fn, ins = partial(_embedding, table=emb), ins[1:]
        elif op == "Gather":
            axis = attrs.get("axis", 0)

            def fn(data: Any, idx: Any, axis: int = axis) -> Any:
                idx = torch.as_tensor(idx).long()
                idx = torch.where(idx < 0, idx + data.shape[axis], idx)
                picked = torch.index_select(data, axis, idx.reshape(-1))
                return picked.reshape((*data.shape[:axis], *idx.shape, *data.shape[axis + 1 :]))
        elif op in UNARY:
            unary: dict[str, Callable[..., Any]] = {
                "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf,
                "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg, "Abs": torch.abs,
                "Reciprocal": torch.reciprocal, "Identity": _identity, "Dropout": _identity,
            }  # fmt: skip
            fn = unary[op]
            if op == "Dropout":
                outs = outs[:1]
        elif op in ELEMENTWISE:
            binary: dict[str, Callable[..., Any]] = {
                "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Pow": torch.pow,
                "Equal": torch.eq, "Greater": torch.gt, "Less": torch.lt, "Where": torch.where,
                "Max": torch.maximum, "Min": torch.minimum,
            }  # fmt: skip
            fn = binary[op]
            if op == "Div" and all(
                (value := constant(n)) is not None and value.dtype.kind in "iu" for n in ins
            ):
                fn = torch.floor_divide
        elif op == "LeakyRelu":
            fn = partial(nn.functional.leaky_relu, negative_slope=attrs.get("alpha", 0.01))
        elif op == "Elu":
            fn = partial(nn.functional.elu, alpha=attrs.get("alpha", 1.0))
        elif op == "Gelu":
            approx = attrs.get("approximate", b"none")
            approx = approx.decode() if isinstance(approx, bytes) else approx
            fn = partial(nn.functional.gelu, approximate=approx)
        elif op in ("Softmax", "LogSoftmax"):
            fn = partial(torch.softmax if op == "Softmax" else torch.log_softmax, dim=attrs.get("axis", -1))
        elif op == "Flatten":
            fn = partial(_flatten, axis=attrs.get("axis", 1))
        elif op == "Reshape":
            allowzero = attrs.get("allowzero", 0)

            def fn(x: Any, shape: Any, allowzero: int = allowzero) -> Any:
                dims = [int(v) for v in shape]
                if not allowzero:
                    dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
                return x.reshape(dims)
        elif op == "Transpose":
            fn = partial(_transpose, perm=attrs.get("perm"))
        elif op in ("MaxPool", "AveragePool"):
            kernel = attrs["kernel_shape"]
            dims = len(kernel)
            pool = getattr(nn.functional, f"{'max' if op == 'MaxPool' else 'avg'}_pool{dims}d")
            kwargs = {
                "kernel_size": kernel,
                "stride": attrs.get("strides", kernel),
                "padding": _symmetric_padding(attrs.get("pads", [0] * 2 * dims), node_where),
                "ceil_mode": bool(attrs.get("ceil_mode", 0)),
            }
            if op == "AveragePool":
                kwargs["count_include_pad"] = bool(attrs.get("count_include_pad", 0))
            fn, outs = partial(pool, **kwargs), outs[:1]
        elif op == "GlobalAveragePool":
            fn = _global_average_pool
        elif op == "Concat":
            fn = partial(_concat, axis=attrs["axis"])
        elif op in ("Unsqueeze", "Squeeze"):
            attr_axes = attrs.get("axes")

            def fn(x: Any, axes: Any = None, attr_axes: Any = attr_axes, op: str = op) -> Any:
                chosen = [
                    int(a)
                    for a in (attr_axes if attr_axes is not None else (axes if axes is not None else []))
                ]
                if op == "Squeeze":
                    return x.squeeze(tuple(chosen)) if chosen else x.squeeze()
                for axis in sorted(a % (x.dim() + len(chosen)) for a in chosen):
                    x = x.unsqueeze(axis)
                return x
        elif op == "Shape":
            fn = partial(_shape, start=attrs.get("start", 0), end=attrs.get("end"))
        elif op == "Cast":
            from onnx import helper

            np_type = helper.tensor_dtype_to_np_dtype(attrs["to"])
            torch_type = torch.from_numpy(np.zeros(1, dtype=np_type)).dtype
            fn = partial(_cast, dtype=torch_type)
        elif op in ("ReduceMean", "ReduceSum", "ReduceL2"):
            attr_axes, keep = attrs.get("axes"), bool(attrs.get("keepdims", 1))
            reducer = {
                "ReduceMean": torch.mean,
                "ReduceSum": torch.sum,
                "ReduceL2": lambda x, dim=None, keepdim=False: torch.linalg.vector_norm(
                    x, dim=dim, keepdim=keepdim
                ),
            }[op]

            def fn(
                x: Any, axes: Any = None, attr_axes: Any = attr_axes, keep: bool = keep, r: Any = reducer
            ) -> Any:
                chosen = (
                    attr_axes if attr_axes is not None else (None if axes is None else [int(a) for a in axes])
                )
                return r(x, dim=tuple(chosen), keepdim=keep) if chosen else r(x)
        elif op == "Clip":
            fn = torch.clamp
        elif op == "Constant":
            from onnx import numpy_helper as nh

            value = (
                nh.to_array(attrs["value"])
                if "value" in attrs
                else np.array(attrs.get("value_float", attrs.get("value_int", 0)))
            )
            module.constants[outs[0]] = tensor(value)
            continue
        elif op == "Slice":

            def fn(x: Any, starts: Any, ends: Any, axes: Any = None, steps: Any = None) -> Any:
                index = [slice(None)] * x.dim()
                axes = range(len(starts)) if axes is None else axes
                steps = [1] * len(starts) if steps is None else steps
                for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
                    size = x.shape[int(a)]
                    index[int(a)] = slice(
                        max(min(int(s), size), -size), max(min(int(e), size), -size - 1), int(st)
                    )
                return x[tuple(index)]
        elif op == "Expand":
            fn = _expand
        elif op == "ConstantOfShape":
            from onnx import numpy_helper as nh

            fill = nh.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
            fn = partial(_constant_of_shape, fill=tensor(fill))
        elif op == "Range":
            fn = torch.arange
        else:  # pragma: no cover - check_convertible already refused it
            raise UnsupportedModelError(node_where, "op type not supported")

        for name in ins:
            value = constant(name)
            if value is None or name in module.constants or name in module.weight_keys:
                continue
            if value.dtype == np.float32 and value.size > 1:
                key = f"w{len(module.weight_keys)}"
                module.weights[key] = nn.Parameter(tensor(value))
                module.weight_keys[name] = key
                module.sources.append(
                    (name, partial(_param_array, module.weights, key, False, 1.0, value.shape))
                )
            else:
                module.constants[name] = tensor(value)
        module.program.append((ins, outs, fn))
    return module


def to_torch(model_path: str | Path, *, traceable: bool = True) -> tuple[Any, ModelSignature]:
    from kondense.compression.model_files import load_model

    model = load_model(model_path)
    return build_module(model, str(model_path), traceable=traceable), signature_of(model)


def export_onnx(module: Any, signature: ModelSignature, example: dict[str, np.ndarray], path: Path) -> None:
    """Trace the module back to ONNX with the same input/output names (and a dynamic batch axis
    where the original had one)."""
    import torch

    module.eval()
    args = tuple(torch.from_numpy(example[spec.name]) for spec in signature.inputs)
    dynamic_axes: dict[str, dict[int, str]] = {}
    for spec in (*signature.inputs, *signature.outputs):
        axes = {i: f"{spec.name}_dim{i}" for i, d in enumerate(spec.shape) if d is None}
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

"""``kondense inspect MODEL``: what a model is and which techniques apply to it, with the reason for
each that does not. Pure description of the ONNX file (no ORT session, no data)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kondense.api.techniques import Technique
from kondense.compression.intake import (
    MIN_OPSET,
    constant_node_value,
    default_opset,
    external_data_files,
    run_time_constants,
)


@dataclass
class Inspection:
    path: str
    producer: str
    ir_version: int
    opsets: dict[str, int]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    parameters: int
    storage: dict[str, Any]
    ops: dict[str, int]
    techniques: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _value(v: Any) -> dict[str, Any]:
    from onnx import TensorProto

    t = v.type.tensor_type
    if not v.type.HasField("tensor_type"):
        return {"name": v.name, "type": v.type.WhichOneof("value") or "unknown", "shape": None}
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    return {"name": v.name, "type": TensorProto.DataType.Name(t.elem_type).lower(), "shape": dims}


def _subgraphs(graph: Any) -> list[tuple[str, Any]]:
    from onnx import AttributeProto

    found = []
    for node in graph.node:
        for attr in node.attribute:
            bodies = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
            for body in bodies:
                found.append((f"{node.op_type} {node.name!r}", body))
                found.extend(_subgraphs(body))
    return found


def inspect(path: str | Path) -> Inspection:
    import onnx

    from kondense.compression.model_files import load_model

    path = Path(path)
    model = load_model(path, with_weights=False)  # BadInputError for unreadable/invalid files
    graph = model.graph
    externals = external_data_files(model)
    initializer_names = {t.name for t in graph.initializer}

    def elements(tensor: Any) -> int:
        return int(np.prod(tensor.dims)) if tensor.dims else 1

    float_types = {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.BFLOAT16,
    }
    init_params = sum(elements(t) for t in graph.initializer if t.data_type in float_types)
    external_params = sum(
        elements(t)
        for t in graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL and t.data_type in float_types
    )
    constants = [constant_node_value(n) for n in graph.node if n.op_type == "Constant"]
    const_params = sum(elements(t) for t in constants if t is not None and t.data_type in float_types)
    sub_params = 0
    subs = _subgraphs(graph)
    for _, body in subs:
        sub_params += sum(elements(t) for t in body.initializer if t.data_type in float_types)
        sub_params += sum(
            elements(t)
            for n in body.node
            if n.op_type == "Constant"
            and (t := constant_node_value(n)) is not None
            and t.data_type in float_types
        )
    all_nodes = list(graph.node) + [n for _, body in subs for n in body.node]
    ops = dict(Counter(n.op_type for n in all_nodes).most_common())
    opset = default_opset(model)
    result = Inspection(
        path=str(path),
        producer=f"{model.producer_name or '(none)'} {model.producer_version}".strip(),
        ir_version=model.ir_version,
        opsets={o.domain or "ai.onnx": o.version for o in model.opset_import},
        inputs=[_value(v) for v in graph.input if v.name not in initializer_names],
        outputs=[_value(v) for v in graph.output],
        parameters=init_params + const_params + sub_params,
        storage={
            "initializers": {"tensors": len(graph.initializer), "parameters": init_params - external_params},
            "constantNodes": {"nodes": len(constants), "parameters": const_params},
            "externalData": {"files": externals, "parameters": external_params},
            "subgraphs": {"graphs": len(subs), "parameters": sub_params},
        },
        ops=ops,
    )
    declared = [v.name for v in graph.input if v.name in initializer_names]
    if model.ir_version < 4 and declared:
        result.notes.append(
            f"IR {model.ir_version}: {len(declared)} initializer(s) are also declared as graph inputs; "
            "intake makes them constants (weights ConstantOfShape computes from them are folded)"
        )
    if 0 < opset < MIN_OPSET:
        result.notes.append(f"opset {opset}: intake upgrades it to {MIN_OPSET} before any technique")
    if const_params:
        result.notes.append(
            f"{len(constants)} Constant node(s) hold weights: intake folds them into initializers"
        )
    result.techniques = applicability(model, const_params, sub_params, subs)
    return result


def applicability(
    model: Any, const_params: int, sub_params: int, subs: list[tuple[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Which techniques apply, with a reason for each that does not (as the passes would decide)."""
    import onnx
    from onnx import TensorProto

    from kondense.api.techniques import WeightOnlyParams
    from kondense.compression.onnx_torch import unsupported_ops
    from kondense.compression.passes import weight_only
    from kondense.compression.passes.quantize import CONV_OPS, WEIGHT_OPS

    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and (t := constant_node_value(node)) is not None:
            weights[node.output[0]] = t  # what intake will turn into initializers
    weights.update(run_time_constants(model))  # ConstantOfShape weights intake folds
    float_weight = {n for n, t in weights.items() if t.data_type == TensorProto.FLOAT and len(t.dims) >= 2}
    weight_nodes = [n for n in graph.node if n.op_type in WEIGHT_OPS and float_weight & set(n.input)]
    dense = [
        n
        for n in graph.node
        if n.op_type in ("MatMul", "Gemm")
        and any(i in float_weight and len(weights[i].dims) == 2 for i in n.input)
    ]
    convs = [n for n in weight_nodes if n.op_type in ("Conv", "Gemm", "MatMul")]
    any_float = any(t.data_type == TensorProto.FLOAT for t in weights.values()) or sub_params > 0
    out: dict[str, dict[str, Any]] = {}

    def verdict(technique: Technique, applies: bool, reason: str) -> None:
        out[technique.value] = {"applies": applies, "reason": reason}

    if weight_nodes:
        kinds = Counter(n.op_type for n in weight_nodes)
        listing = ", ".join(f"{c} {op}" for op, c in kinds.most_common())
        conv_count = sum(kinds.get(op, 0) for op in CONV_OPS)
        dynamic = len(weight_nodes) - conv_count
        kept = (
            f"; its {conv_count} Conv node(s) stay float32 unless params.quantizeConv (ONNX Runtime's "
            "dynamic ConvInteger kernels are slow on CPU)"
            if conv_count
            else ""
        )
        if dynamic:
            verdict(
                Technique.DYNAMIC_INT8,
                True,
                f"{len(weight_nodes)} weight node(s) ({listing}), {dynamic} quantized by default{kept}",
            )
        else:
            verdict(
                Technique.DYNAMIC_INT8,
                False,
                f"its weight nodes are all Conv ({listing}), which dynamic-int8 keeps float32 by default "
                "(slow dynamic ConvInteger kernels); use static-int8, or params.quantizeConv: true",
            )
        verdict(
            Technique.STATIC_INT8,
            True,
            f"{len(weight_nodes)} weight node(s) to quantize ({listing}); needs calibration data "
            "(data.calibration)",
        )
    else:
        inside = sum(1 for _, body in subs for n in body.node if n.op_type in WEIGHT_OPS)
        reason = (
            f"its {inside} weight node(s) sit inside If/Loop/Scan subgraphs ({subs[0][0]}), and ONNX Runtime's "
            "quantizer only quantizes the main graph"
            if inside
            else "no MatMul/Gemm/Conv/Gather node reads a float weight (weights are computed at run time or absent)"
        )
        verdict(Technique.DYNAMIC_INT8, False, reason)
        verdict(Technique.STATIC_INT8, False, reason)
    verdict(
        Technique.FP16,
        any_float,
        "float32 weights to halve; with a budget, nodes that break it stay float32"
        if any_float
        else "no float32 weight to convert",
    )
    bad = unsupported_ops(model)
    shapes = [n.name for n in graph.node if n.op_type == "Shape"]
    if bad:
        listing = ", ".join(f"{op} ({len(names)})" for op, names in sorted(bad.items()))
        torch_reason = f"op types the onnx->torch converter does not support: {listing}"
    else:
        torch_reason = ""
    if torch_reason:
        verdict(Technique.PRUNE, False, torch_reason)
        verdict(Technique.DISTILL, False, torch_reason)
    else:
        verdict(
            Technique.PRUNE,
            len(convs) >= 1,
            f"{len(convs)} Conv/Linear layer(s) with constant weights; structured pruning needs two or more"
            if convs
            else "no Conv or Linear layer with constant weights to prune",
        )
        verdict(
            Technique.DISTILL,
            not shapes and bool(convs),
            "student built from the converted graph; needs training or calibration data"
            if not shapes and convs
            else (
                f"the graph computes shapes at run time (Shape nodes {shapes[:3]}): a changed student cannot be traced"
                if shapes
                else "no Conv or Linear layer to shrink"
            ),
        )
    verdict(
        Technique.LOW_RANK,
        bool(dense),
        f"{len(dense)} MatMul/Gemm layer(s) with a 2-D weight to factor (large ones only, see minDim)"
        if dense
        else "no MatMul/Gemm with a 2-D weight to factor (convolutions are not factored)",
    )
    # weight-only decides on the graph intake makes (Constant weights as initializers), with its defaults
    folded = onnx.GraphProto(node=[n for n in graph.node if n.output and n.output[0] not in weights])
    folded.initializer.extend(  # names, types and shapes are all it reads: no weight data is copied
        TensorProto(name=name, data_type=t.data_type, dims=t.dims) for name, t in weights.items()
    )
    defaults = WeightOnlyParams()
    found = weight_only.weight_nodes(onnx.ModelProto(graph=folded), defaults.blockSize)
    tables = found.gathers if defaults.embeddings != "none" else ()
    if found.matmuls or tables:
        taken = f"{len(found.matmuls)} MatMul weight(s)" + (
            f" and {len(tables)} embedding table(s)" if tables else ""
        )
        verdict(Technique.WEIGHT_ONLY, True, f"{taken} to block-quantize (MatMulNBits/GatherBlockQuantized)")
    else:
        reason = weight_only.nothing_to_quantize(found, defaults.embeddings, defaults.blockSize)
        verdict(Technique.WEIGHT_ONLY, False, reason.removeprefix("nothing to quantize: "))
    return out

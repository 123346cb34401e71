"""The ONNX → torch converter registry, op by op against ONNX Runtime on random inputs.

Each case is a one-node ONNX graph built with ``onnx.helper``: ORT runs it, the converted torch
module runs it, the outputs must agree. A meta-test checks every registered converter has a case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from kondense.compression.errors import UnsupportedModelError
from kondense.compression.model_files import signature_of
from kondense.compression.onnx_torch import build_module, export_onnx, supported_ops

OPSET = 18
rng = np.random.default_rng(0)


def f32(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def graph_model(
    nodes: list[Any],
    inputs: dict[str, np.ndarray],
    inits: dict[str, np.ndarray],
    outputs: list[str],
    opset: int,
) -> Any:
    graph = helper.make_graph(
        nodes,
        "case",
        [
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
            for name, a in inputs.items()
        ],
        [helper.make_empty_tensor_value_info(name) for name in outputs],
        [numpy_helper.from_array(a, name) for name, a in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(inferred)
    return inferred


def run_both(
    model: Any, inputs: dict[str, np.ndarray], *, traceable: bool = False
) -> tuple[list[Any], list[Any]]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, inputs)
    module = build_module(model, "case.onnx", traceable=traceable).eval()
    with torch.no_grad():
        got = module(*[torch.from_numpy(inputs[name]) for name in inputs])
    got = list(got) if isinstance(got, tuple) else [got]
    return expected, [g.numpy() if isinstance(g, torch.Tensor) else np.asarray(g) for g in got]


def assert_same(expected: list[Any], got: list[Any]) -> None:
    assert len(expected) == len(got)
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape, (e.shape, g.shape)
        if e.dtype == np.bool_:
            np.testing.assert_array_equal(g, e)
        else:
            np.testing.assert_allclose(g.astype(np.float64), e.astype(np.float64), rtol=1e-4, atol=1e-5)


def case(
    op: str,
    inputs: dict[str, np.ndarray],
    inits: dict[str, np.ndarray] | None = None,
    *,
    order: list[str] | None = None,
    outputs: int = 1,
    opset: int = OPSET,
    id: str | None = None,
    **attrs: Any,
) -> Any:
    return pytest.param(op, inputs, inits or {}, order, outputs, opset, attrs, id=id or op)


POS = np.abs(f32(2, 3, 4)) + 0.1
BOOL_A, BOOL_B = rng.random((3, 4)) > 0.5, rng.random((3, 4)) > 0.5
X4 = f32(2, 4, 6, 8)

# fmt: off
CASES = [
    # activations and elementwise
    case("HardSigmoid", {"x": f32(2, 3, 4) * 4}),
    case("HardSigmoid", {"x": f32(2, 3, 4) * 4}, alpha=0.3, beta=0.4, id="HardSigmoid-attrs"),
    case("HardSwish", {"x": f32(2, 3, 4) * 4}),
    *[
        case(op, {"x": f32(2, 3, 4)})
        for op in ("Relu", "Sigmoid", "Tanh", "Erf", "Exp", "Neg", "Abs", "Floor", "Ceil", "Sin", "Cos", "Sign")
    ],
    *[case(op, {"x": f32(2, 3, 4)}) for op in ("Softplus", "Softsign", "Mish", "Identity", "Selu", "Elu")],
    case("Sqrt", {"x": POS}),
    case("Log", {"x": POS}),
    case("Reciprocal", {"x": POS}),
    case("LeakyRelu", {"x": f32(2, 3, 4)}, alpha=0.2),
    case("Elu", {"x": f32(2, 3, 4)}, alpha=0.7, id="Elu-alpha"),
    case("Gelu", {"x": f32(2, 3, 4)}, opset=20),
    case("Gelu", {"x": f32(2, 3, 4)}, opset=20, approximate="tanh", id="Gelu-tanh"),
    case("Dropout", {"x": f32(2, 3)}),
    case("Not", {"a": BOOL_A}),
    *[case(op, {"a": BOOL_A, "b": BOOL_B}) for op in ("And", "Or")],
    *[case(op, {"a": f32(3, 4), "b": f32(4)}) for op in ("Add", "Sub", "Mul", "Div", "Max", "Min")],
    *[case(op, {"a": f32(3, 4), "b": f32(3, 4)}) for op in ("Equal", "Greater", "Less")],
    *[case(op, {"a": f32(3, 4), "b": f32(3, 4)}) for op in ("GreaterOrEqual", "LessOrEqual")],
    case("Pow", {"a": POS, "b": f32(2, 3, 4)}),
    case("Add", {"a": f32(3, 4)}, {"b": f32(3, 4)}, id="Add-weight"),
    case("Div", {"a": f32(3)}, {"n": i64(7, 9), "d": i64(2, 4)}, order=["n", "d"], id="Div-int-constants"),
    case("Where", {"c": BOOL_A, "a": f32(3, 4), "b": f32(3, 4)}),
    case("Sum", {"a": f32(3, 4), "b": f32(3, 4), "c": f32(4)}),
    case("Mean", {"a": f32(3, 4), "b": f32(3, 4), "c": f32(4)}),
    case("Max", {"a": f32(3, 4), "b": f32(3, 4), "c": f32(4)}, id="Max-variadic"),
    case("Clip", {"x": f32(3, 4)}, {"lo": np.array(-0.5, np.float32), "hi": np.array(0.5, np.float32)}),
    case("Clip", {"x": f32(3, 4)}, {"hi": np.array(0.2, np.float32)}, order=["x", "", "hi"], id="Clip-max-only"),
    case("PRelu", {"x": f32(2, 3, 4, 4)}, {"s": f32(3, 1, 1)}),
    case("PRelu", {"x": f32(2, 3)}, {"s": np.array([0.1], np.float32)}, id="PRelu-shared"),
    case("Softmax", {"x": f32(2, 3, 4)}, axis=1),
    case("LogSoftmax", {"x": f32(2, 3, 4)}),
    case("Cast", {"x": f32(2, 3) * 10}, to=TensorProto.INT64),
    # layers with weights
    case("Conv", {"x": X4}, {"w": f32(6, 2, 3, 3), "b": f32(6)}, group=2, strides=[2, 1], pads=[1, 1, 1, 1]),
    case("Conv", {"x": f32(2, 4, 9)}, {"w": f32(5, 4, 3)}, dilations=[2], id="Conv-1d"),
    case(
        "ConvTranspose", {"x": X4}, {"w": f32(4, 3, 3, 3), "b": f32(3)},
        strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1],
    ),
    case("ConvTranspose", {"x": f32(2, 4, 7)}, {"w": f32(4, 2, 4)}, group=2, strides=[3], id="ConvTranspose-1d"),
    case("ConvTranspose", {"x": X4}, {"w": f32(4, 2, 2, 2)}, strides=[2, 2], id="ConvTranspose-upsample"),
    case("Gemm", {"a": f32(3, 5)}, {"w": f32(4, 5), "c": f32(4)}, transB=1, alpha=0.5, beta=2.0),
    case("Gemm", {"a": f32(5, 3), "w": f32(5, 4)}, transA=1, id="Gemm-runtime"),
    case("MatMul", {"a": f32(2, 3, 5)}, {"w": f32(5, 4)}),
    case("MatMul", {"a": f32(2, 3, 5), "b": f32(2, 5, 4)}, id="MatMul-runtime"),
    case(
        "BatchNormalization", {"x": X4},
        {"s": f32(4), "b": f32(4), "m": f32(4), "v": np.abs(f32(4)) + 0.5}, epsilon=1e-3,
    ),
    case("LayerNormalization", {"x": f32(2, 3, 8)}, {"s": f32(8), "b": f32(8)}, epsilon=1e-3),
    case("LayerNormalization", {"x": f32(2, 3, 8)}, {"s": f32(3, 8)}, axis=-2, id="LayerNormalization-2axes"),
    case("Gather", {"i": i64(3, 0, 2)}, {"t": f32(5, 4)}, order=["t", "i"], id="Gather-embedding"),
    case("Gather", {"x": f32(3, 5, 2)}, {"i": i64(-1, 0)}, axis=1),
    # pooling and resizing
    case("MaxPool", {"x": X4}, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    case("AveragePool", {"x": X4}, kernel_shape=[2, 3], strides=[2, 2], ceil_mode=1),
    case("GlobalAveragePool", {"x": X4}),
    case("GlobalMaxPool", {"x": X4}),
    case(
        "Resize", {"x": X4}, {"s": np.array([1, 1, 2, 3], np.float32)}, order=["x", "", "s"],
        mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor",
    ),
    case(
        "Resize", {"x": X4}, {"s": np.array([1, 1, 2, 2], np.float32)}, order=["x", "", "s"],
        mode="linear", id="Resize-linear-scales",
    ),
    case(
        "Resize", {"x": X4}, {"z": i64(2, 4, 11, 5)}, order=["x", "", "", "z"],
        mode="linear", coordinate_transformation_mode="align_corners", id="Resize-linear-sizes",
    ),
    case(
        "Resize", {"x": X4}, {"z": i64(2, 4, 3, 13)}, order=["x", "", "", "z"], mode="nearest",
        coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil", id="Resize-nearest-sizes",
    ),
    # shapes and layout
    case("Transpose", {"x": X4}, perm=[0, 2, 3, 1]),
    case("Transpose", {"x": f32(2, 3)}, id="Transpose-default"),
    case("Reshape", {"x": X4}, {"s": i64(0, -1, 4)}),
    case("Flatten", {"x": X4}, axis=2),
    *[case("Flatten", {"x": X4}, axis=a, id=f"Flatten-axis{a}") for a in (0, 1, 3, 4, -1, -3)],
    case("Unsqueeze", {"x": f32(2, 3)}, {"a": i64(0, -1)}),
    case("Squeeze", {"x": f32(2, 1, 3, 1)}, {"a": i64(1)}),
    case("Concat", {"a": f32(2, 3), "b": f32(2, 5)}, axis=-1),
    case("Split", {"x": f32(2, 7)}, {"s": i64(3, 4)}, axis=1, outputs=2),
    case("Split", {"x": f32(7, 2)}, outputs=3, num_outputs=3, id="Split-uneven"),
    case("Slice", {"x": X4}, {"st": i64(1, -1), "en": i64(6, 0), "ax": i64(2, 3), "sp": i64(2, -2)}),
    case("Tile", {"x": f32(2, 3)}, {"r": i64(2, 3)}),
    case("Pad", {"x": X4}, {"p": i64(0, 0, 1, 2, 0, 0, 3, 1), "v": np.array(0.5, np.float32)}),
    case("Pad", {"x": X4}, {"p": i64(0, 0, 2, 1, 0, 0, 1, 3)}, mode="reflect", id="Pad-reflect"),
    case("Pad", {"x": X4}, {"p": i64(1, 2, 1, 2), "a": i64(2, 3)}, order=["x", "p", "", "a"], mode="edge", id="Pad-edge-axes"),
    case("Expand", {"x": f32(3, 1)}, {"s": i64(2, 3, 4)}),
    case("Shape", {"x": X4}, start=1, end=-1),
    case("ReduceMean", {"x": X4}, {"a": i64(2, 3)}),
    case("ReduceSum", {"x": X4}, {"a": i64(1)}, keepdims=0),
    case("ReduceMax", {"x": X4}, {"a": i64(-1)}),
    case("ReduceMin", {"x": X4}, keepdims=0),
    case("ReduceL2", {"x": X4}, {"a": i64(1)}),
    # noop_with_empty_axes (ReduceSum opset 13, the others opset 18): empty axes = identity when 1,
    # every axis when 0; given axes reduce as usual (a tf2onnx export writes it on every ReduceSum)
    case("ReduceSum", {"x": X4}, {"a": i64()}, noop_with_empty_axes=1, id="ReduceSum-noop-empty-axes"),
    case("ReduceSum", {"x": X4}, noop_with_empty_axes=1, keepdims=0, id="ReduceSum-noop-no-axes"),
    case("ReduceSum", {"x": X4}, {"a": i64()}, noop_with_empty_axes=0, keepdims=0, id="ReduceSum-empty-axes-all"),
    case("ReduceSum", {"x": X4}, {"a": i64(1)}, noop_with_empty_axes=1, keepdims=0, opset=15, id="ReduceSum-noop-axes"),
    case("ReduceMax", {"x": X4}, noop_with_empty_axes=1, id="ReduceMax-noop-no-axes"),
    case("ReduceMean", {"x": X4}, {"a": i64(-1)}, noop_with_empty_axes=1, id="ReduceMean-noop-axes"),
    case("Range", {"x": f32(1)}, {"a": np.array(1, np.int64), "b": np.array(9, np.int64), "d": np.array(3, np.int64)}, order=["a", "b", "d"]),
    case("ConstantOfShape", {"x": f32(1)}, {"s": i64(2, 3)}, order=["s"], value=numpy_helper.from_array(np.array([1.5], np.float32))),
]
# fmt: on


@pytest.mark.parametrize(("op", "inputs", "inits", "order", "outputs", "opset", "attrs"), CASES)
def test_op_matches_onnx_runtime(op, inputs, inits, order, outputs, opset, attrs):
    names = order if order is not None else [*inputs, *inits]
    outs = [f"y{i}" for i in range(outputs)]
    node = helper.make_node(op, names, outs, name=f"the_{op.lower()}", **attrs)
    # graphs whose node reads only constants still need an input for the module's signature
    used = {k: v for k, v in inputs.items() if k in names} or inputs
    model = graph_model([node], used, inits, outs, opset)
    expected, got = run_both(model, used)
    assert_same(expected, got)


def test_constant_node():
    value = numpy_helper.from_array(f32(2, 3), "c")
    nodes = [
        helper.make_node("Constant", [], ["c"], value=value),
        helper.make_node("Add", ["x", "c"], ["y"]),
    ]
    x = f32(2, 3)
    assert_same(*run_both(graph_model(nodes, {"x": x}, {}, ["y"], OPSET), {"x": x}))


def test_gelu_erf_decomposition_matches():
    """The Gelu exporters write before opset 20: x * 0.5 * (1 + erf(x / sqrt(2)))."""
    consts = {
        "root2": np.array(np.sqrt(2), np.float32),
        "one": np.array(1, np.float32),
        "half": np.array(0.5, np.float32),
    }
    nodes = [
        helper.make_node("Div", ["x", "root2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
        helper.make_node("Mul", ["x", "a"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["y"]),
    ]
    x = f32(4, 8) * 3
    expected, got = run_both(graph_model(nodes, {"x": x}, consts, ["y"], 17), {"x": x})
    assert_same(expected, got)
    np.testing.assert_allclose(got[0], torch.nn.functional.gelu(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_matmul_add_fuses_into_one_linear_layer():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    x = f32(3, 5)
    model = graph_model(nodes, {"x": x}, {"w": f32(5, 4), "b": f32(4)}, ["y"], OPSET)
    assert_same(*run_both(model, {"x": x}))
    module = build_module(model, "case.onnx")
    assert [type(layer).__name__ for layer in module.layers.values()] == ["Linear"]
    assert module.layers["n0"].bias is not None


def flatten_by_shape_graph(batch: int | str) -> tuple[Any, list[Any]]:
    """The exporters' flatten: Reshape(x, Concat(Cast(Slice(Shape(x), 0, 1)), [-1]))."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["c"], ["s"]),
        helper.make_node("Cast", ["s"], ["s32"], to=TensorProto.INT32),
        helper.make_node("Slice", ["s32", "zero", "one"], ["n32"]),
        helper.make_node("Cast", ["n32"], ["n"], to=TensorProto.INT64),
        helper.make_node("Concat", ["n", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["c", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["y"]),
    ]
    inits = {"w": f32(4, 3, 3, 3), "zero": i64(0), "one": i64(1), "minus1": i64(-1), "fc": f32(4 * 5 * 6, 2)}
    graph = helper.make_graph(
        nodes, "flatten",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 5, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2])],
        [numpy_helper.from_array(a, n) for n, a in inits.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model, nodes


def test_static_shape_arithmetic_is_folded_into_constants():
    model, _ = flatten_by_shape_graph(2)
    module = build_module(model, "case.onnx", traceable=False)
    assert {"s", "s32", "n32", "n", "target"} <= set(module.constants)
    assert module.constants["target"].tolist() == [2, -1]
    steps = [outs for _, outs, _ in module.program]
    assert ["s"] not in steps and ["target"] not in steps  # no run-time shape step left
    x = f32(2, 3, 5, 6)
    assert_same(*run_both(model, {"x": x}))


def test_dynamic_batch_shape_arithmetic_traces_back_with_a_dynamic_batch(tmp_path: Path):
    """Structured passes trace the module; the batch read from Shape must stay dynamic."""
    model, _ = flatten_by_shape_graph("n")
    module = build_module(model, "case.onnx", traceable=True).eval()
    x = f32(3, 3, 5, 6)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(
            module(torch.from_numpy(x)).numpy(), session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-4
        )
    export_onnx(module, signature_of(model), {"x": x[:1]}, tmp_path / "rt.onnx")
    traced = ort.InferenceSession(str(tmp_path / "rt.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        sample = f32(batch, 3, 5, 6)
        np.testing.assert_allclose(
            traced.run(None, {"x": sample})[0], session.run(None, {"x": sample})[0], rtol=1e-5, atol=1e-4
        )


def test_flatten_past_the_batch_traces_back_with_dynamic_leading_dims(tmp_path: Path):
    """An OCR recogniser flattens [N, T, C] to [N*T, C] (Flatten axis=2, N and T dynamic): traced
    with one batch/width, the export must run at others (it froze N*T = 80 and failed at 1x40)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "t", 6])
    node = helper.make_node("Flatten", ["x"], ["y"], axis=2)
    graph = helper.make_graph([node], "g", [x], [helper.make_empty_tensor_value_info("y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    model = onnx.shape_inference.infer_shapes(model)
    module = build_module(model, "case.onnx", traceable=True).eval()
    export_onnx(module, signature_of(model), {"x": f32(2, 40, 6)}, tmp_path / "rt.onnx")
    traced = ort.InferenceSession(str(tmp_path / "rt.onnx"), providers=["CPUExecutionProvider"])
    for batch, steps in ((1, 40), (3, 7)):
        sample = f32(batch, steps, 6)
        np.testing.assert_array_equal(traced.run(None, {"x": sample})[0], sample.reshape(batch * steps, 6))


def test_shape_arithmetic_a_trace_cannot_keep_is_refused_for_traced_passes():
    """Arithmetic on a run-time dim (here batch * 2) cannot be written as x.shape[i] reads."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Mul", ["n", "two"], ["n2"]),
        helper.make_node("Unsqueeze", ["n2", "axes"], ["n2v"]),
        helper.make_node("Concat", ["n2v", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape"),
    ]
    inits = {"zero": np.array(0, np.int64), "two": np.array(2, np.int64), "axes": i64(0), "minus1": i64(-1)}
    x = f32(2, 4, 6)
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for n, a in inits.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    with pytest.raises(UnsupportedModelError, match=r"Shape \(run-time shape arithmetic.*\)"):
        build_module(model, "case.onnx", traceable=True)
    assert_same(*run_both(model, {"x": x}))  # trained in place, it runs


def test_unsupported_op_names_node_op_and_the_supported_ones():
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="pick")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 2])], [numpy_helper.from_array(i64(2), "k")],
    )  # fmt: skip
    with pytest.raises(UnsupportedModelError) as caught:
        build_module(helper.make_model(graph), "model.onnx")
    message = str(caught.value)
    assert message.startswith("model.onnx: op types not supported by the torch training passes: TopK (pick)")
    assert "supported: " in message and "HardSigmoid" in message and "Resize" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("attrs", "problem"),
    [
        ({"mode": "cubic"}, "resize mode 'cubic' is not supported"),
        ({"mode": "linear", "coordinate_transformation_mode": "asymmetric"}, "asymmetric coordinates"),
        ({"mode": "nearest"}, "half_pixel/round_prefer_floor has no torch equivalent"),
    ],
)
def test_resize_variants_without_a_torch_equivalent_are_refused_clearly(attrs, problem):
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], name="up", **attrs)
    model = graph_model([node], {"x": X4}, {"s": np.array([1, 1, 2, 2], np.float32)}, ["y"], OPSET)
    with pytest.raises(UnsupportedModelError, match=rf"case.onnx: node up \(Resize\): .*{problem}"):
        build_module(model, "case.onnx")


def test_every_registered_converter_has_a_case():
    covered = {p.values[0] for p in CASES} | {"Constant"}
    assert sorted(set(supported_ops()) - covered) == []


@pytest.mark.parametrize("through_reshape", [False, True], ids=["constant", "reshaped"])
def test_bias_added_after_a_conv_becomes_the_conv_bias_and_writes_back(through_reshape):
    """paddle2onnx writes Add(Conv(x, W), Reshape(b, [1, C, 1, 1])); pruning must see one layer."""
    from kondense.compression.onnx_torch import write_back

    bias = f32(6)
    inits = {"w": f32(6, 4, 3, 3)}
    if through_reshape:
        inits |= {"b": bias, "shape": i64(1, 6, 1, 1)}
        nodes = [
            helper.make_node("Conv", ["x", "w"], ["c"]),
            helper.make_node("Reshape", ["b", "shape"], ["b4"]),
            helper.make_node("Add", ["c", "b4"], ["y"]),
        ]
    else:
        inits |= {"b": bias.reshape(1, 6, 1, 1)}
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Add", ["b", "c"], ["y"])]
    x = f32(2, 4, 7, 7)
    model = graph_model(nodes, {"x": x}, inits, ["y"], OPSET)
    assert_same(*run_both(model, {"x": x}))
    module = build_module(model, "case.onnx")
    (conv,) = module.layers.values()
    assert conv.bias is not None and len(module.program) == 1 and not module.weight_keys
    with torch.no_grad():
        conv.bias += 1.0
    write_back(module, model, "case.onnx")
    written = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}["b"]
    np.testing.assert_allclose(written.reshape(-1), bias + 1.0, rtol=1e-6)
    assert written.shape == inits["b"].shape


def test_resize_scales_are_settings_not_trainable_weights():
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear")
    model = graph_model([node], {"x": X4}, {"s": np.array([1, 1, 2, 2], np.float32)}, ["y"], OPSET)
    module = build_module(model, "case.onnx")
    assert list(module.parameters()) == [] and "s" in module.constants

"""Techniques on graphs shaped like other toolchains' exports (built here, small): a paddle2onnx-like
CNN (opset 11, weights as Constant nodes, BatchNorm, HardSigmoid, dynamic H×W, flatten through
Shape/Concat(axis=-1)) and a model whose weights all live in an If subgraph.

Assertions are relations and validity (the variant loads, has int8 nodes, is smaller), never exact
deltas: int8 kernels differ between CPUs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kondense.api.techniques import Task
from kondense.compression.data import Dataset
from kondense.compression.errors import UnsupportedModelError
from kondense.compression.evaluation import Reference
from kondense.compression.passes import PassContext, pass_for
from kondense.compression.passes.quantize import offending_nodes
from kondense.compression.pipeline import DataFiles, compress_model


def _const(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], name=f"const_{name}", value=numpy_helper.from_array(array, name)
    )


def paddle_cnn(opset: int = 11) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [
        _const("w1", rng.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32)),
        _const("scale", rng.uniform(0.5, 1.5, 16).astype(np.float32)),
        _const("bias", rng.normal(0, 0.1, 16).astype(np.float32)),
        _const("mean", rng.normal(0, 0.1, 16).astype(np.float32)),
        _const("var", rng.uniform(0.5, 1.5, 16).astype(np.float32)),
        _const("w2", rng.normal(0, 0.2, (32, 16, 3, 3)).astype(np.float32)),
        _const("b2", rng.normal(0, 0.1, 32).astype(np.float32)),
        _const("fc", rng.normal(0, 0.3, (32, 4)).astype(np.float32)),
        _const("starts", np.array([0], dtype=np.int64)),
        _const("ends", np.array([1], dtype=np.int64)),
        _const("minus1", np.array([-1], dtype=np.int32)),
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "scale", "bias", "mean", "var"], ["bn1"], name="bn1"),
        helper.make_node("HardSigmoid", ["bn1"], ["hs"], name="hsig", alpha=0.2, beta=0.5),
        helper.make_node("Mul", ["bn1", "hs"], ["a1"], name="hswish"),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["a2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["a2"], ["p"], name="gap"),
        helper.make_node("Shape", ["p"], ["shape"], name="shape"),
        helper.make_node("Cast", ["shape"], ["shape32"], name="cast32", to=TensorProto.INT32),
        helper.make_node("Slice", ["shape32", "starts", "ends"], ["n"], name="slice"),
        helper.make_node("Concat", ["n", "minus1"], ["target32"], name="concat", axis=-1),
        helper.make_node("Cast", ["target32"], ["target"], name="cast64", to=TensorProto.INT64),
        helper.make_node("Reshape", ["p", "target"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "fc"], ["logits"], name="fc"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "paddle_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "H", "W"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [-1, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


@pytest.fixture
def paddle(tmp_path: Path) -> tuple[Path, DataFiles]:
    model = paddle_cnn()
    onnx.checker.check_model(model)
    path = tmp_path / "paddle.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(1)
    for name, count in (("eval", 64), ("calib", 32)):
        np.savez(tmp_path / f"{name}.npz", x=rng.random((count, 3, 16, 24), dtype=np.float32))
    return path, DataFiles(evaluation=tmp_path / "eval.npz", calibration=tmp_path / "calib.npz")


def _loads(path: Path) -> set[str]:
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize(
    ("technique", "params", "int8_op"),
    [
        ("dynamic-int8", {"quantizeConv": True}, "ConvInteger"),
        ("static-int8", {"perChannel": False}, "QuantizeLinear"),
        ("static-int8", {"perChannel": True}, "QuantizeLinear"),
    ],
)
def test_int8_on_a_paddle_like_graph(paddle, tmp_path, technique, params, int8_op):
    """Before intake: 'no MatMul/Gemm/Conv/Gather node with a float weight' (dynamic) and an invalid
    per-channel QDQ graph (static, opset 11). Now a valid int8 variant with every weight node quantized."""
    model, data = paddle
    target = {"name": "q", "technique": technique, "params": {**params, "tune": False}}
    manifest = compress_model(
        model, target, data, tmp_path / "out", task=Task.CLASSIFICATION, latency_runs=10
    )
    ops = _loads(tmp_path / "out" / "model.onnx")
    assert int8_op in ops or "MatMulInteger" in ops
    assert manifest.metrics.sizeRatio is not None and manifest.metrics.sizeRatio < 0.6
    assert manifest.steps[0].details["quantizedNodes"] == 3  # conv1, conv2, fc
    intake = manifest.model_dump()["intake"]
    assert intake["sourceOpset"] == 11 and intake["opset"] >= 13
    assert intake["constantNodesFolded"] >= 8


def test_invalid_quantized_graph_is_detected_never_shipped(paddle, tmp_path):
    """Without intake, ORT's per-channel QDQ on the opset-11 graph is invalid in every form (fused:
    int32 bias DequantizeLinear; unfused: DequantizeLinear 'axis' needs opset 13). The pass detects it
    by loading, recovers as far as it can, and ends in one sentence instead of writing a broken file."""
    from kondense.compression.intake import fold_constant_nodes

    model = paddle_cnn()
    fold_constant_nodes(model)  # weights visible, opset still 11
    source = tmp_path / "m.onnx"
    onnx.save(model, str(source))
    data = Dataset("x", {"x": np.random.default_rng(2).random((16, 3, 16, 24), dtype=np.float32)})
    work = tmp_path / "work"
    work.mkdir()
    context = PassContext(
        task=Task.CLASSIFICATION,
        calibration=data,
        train=None,
        reference=Reference.compute(source, data, Task.CLASSIFICATION),
        work_dir=work,
    )
    destination = tmp_path / "out.onnx"
    with pytest.raises(UnsupportedModelError, match="would leave no node quantized") as caught:
        pass_for("static-int8", {"perChannel": True, "tune": False}).run(source, destination, context)
    assert "DequantizeLinear" in str(caught.value) and "\n" not in str(caught.value)
    assert not destination.exists()


def test_offending_node_is_mapped_back_from_the_quantizer_names():
    model = paddle_cnn()
    from kondense.compression.intake import fold_constant_nodes

    fold_constant_nodes(model)
    error = (
        "[ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model failed:This is an invalid model. In Node, "
        '("w2_DequantizeLinear", DequantizeLinear, "", -1) : ("w2_quantized": tensor(int8),) -> ...'
    )
    assert offending_nodes(error, model) == ["conv2"]
    assert offending_nodes("Non-zero status code returned while running Add node. Name:'fc'", model) == ["fc"]
    assert offending_nodes("something else entirely", model) == []
    float16_error = (
        "Type Error: Type (tensor(float)) of output arg (probs) of node (fc_cast_to_probs) does not match"
    )
    assert offending_nodes(float16_error, model) == ["fc"]


def if_model() -> onnx.ModelProto:
    rng = np.random.default_rng(3)

    def branch(name: str) -> onnx.GraphProto:
        w = numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), f"w_{name}")
        return helper.make_graph(
            [helper.make_node("MatMul", ["x", f"w_{name}"], [f"y_{name}"], name=f"mm_{name}")],
            name,
            [],
            [helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, [-1, 4])],
            [w],
        )

    graph = helper.make_graph(
        [
            helper.make_node(
                "If", ["flag"], ["y"], name="dispatch", then_branch=branch("a"), else_branch=branch("b")
            )
        ],
        "iffy",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 8]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])


def test_weights_inside_an_if_subgraph_get_a_clear_refusal(tmp_path):
    """silero-vad's spox export keeps the whole network in If branches; ORT quantizes only the main graph."""
    rng = np.random.default_rng(3)
    model = if_model()
    path = tmp_path / "iffy.onnx"
    onnx.save(model, str(path))
    data = Dataset("x", {"x": rng.random((4, 8), dtype=np.float32), "flag": np.ones((4,), dtype=bool)})
    work = tmp_path / "w"
    work.mkdir()
    context = PassContext(
        task=Task.REGRESSION,
        calibration=None,
        train=None,
        reference=Reference(path, data, Task.REGRESSION, np.zeros((4, 4))),
        work_dir=work,
    )
    with pytest.raises(UnsupportedModelError, match=r"inside the subgraphs of If 'dispatch'"):
        pass_for("dynamic-int8", {}).run(path, tmp_path / "out.onnx", context)
    # fp16's converter leaves subgraph weights float32 too: a variant that is not smaller is refused
    with pytest.raises(UnsupportedModelError) as refused:
        pass_for("fp16", {}).run(path, tmp_path / "half.onnx", context)
    assert "does not make this model smaller" in str(refused.value)
    assert "of them sit inside If/Loop/Scan subgraphs" in str(refused.value)


def overflowing_model() -> onnx.ModelProto:
    """A scale of 3e-8: onnxconverter-common clamps float16 constants to at least 1e-7, so the Mul
    computes 3x too much in float16 (ONNX Runtime's CPU kernels compute in float32; the constant is
    what breaks). A divisor of 5e4 (above the converter's clamp of 1e4) is kept float32 always."""
    rng = np.random.default_rng(4)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Div", ["r", "down"], ["small"], name="divide"),
            helper.make_node("Mul", ["small", "tiny"], ["back"], name="scale_down"),
            helper.make_node("MatMul", ["back", "w2"], ["y"], name="mm2"),
        ],
        "overflow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [
            numpy_helper.from_array(rng.normal(size=(16, 32)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array(5e4, dtype=np.float32), "down"),
            numpy_helper.from_array(np.array(3e-8, dtype=np.float32), "tiny"),
            numpy_helper.from_array(rng.normal(size=(32, 8)).astype(np.float32), "w2"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fp16_mixed_precision_keeps_the_breaking_nodes_float32(tmp_path):
    source = tmp_path / "overflow.onnx"
    onnx.save(overflowing_model(), str(source))
    np.savez(tmp_path / "eval.npz", x=np.random.default_rng(5).normal(size=(32, 16)).astype(np.float32))
    data = DataFiles(evaluation=tmp_path / "eval.npz")
    target = {"name": "half", "technique": "fp16"}

    plain = compress_model(source, target, data, tmp_path / "plain", task=Task.REGRESSION, latency_runs=10)
    assert plain.steps[0].details["mixedPrecision"] is False  # no budget: converted as asked ...
    assert plain.steps[0].details["keptFloat32ForRange"] == ["divide"]  # ... but for the clamped weight
    broken = plain.metrics.accuracyDelta
    assert broken is not None and (not np.isfinite(broken) or broken > 0.5)  # ... and broken

    mixed = compress_model(
        source,
        target,
        data,
        tmp_path / "mixed",
        task=Task.REGRESSION,
        max_accuracy_delta=0.01,
        latency_runs=10,
    )
    delta = mixed.metrics.accuracyDelta
    assert mixed.gate is not None and mixed.gate.passed and delta is not None and delta <= 0.01
    details = mixed.steps[0].details
    assert details["mixedPrecision"] is True
    assert details["nodesKeptFloat32"] == ["scale_down"]  # measured: the one node that breaks
    assert details["keptFloat32ForRange"] == ["divide"]
    assert mixed.trials[0].withinBudget is False and mixed.trials[-1].withinBudget is True
    model = onnx.load(str(tmp_path / "mixed" / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # keepIoTypes
    assert TensorProto.FLOAT16 in {t.data_type for t in model.graph.initializer}
    assert mixed.metrics.sizeRatio is not None and mixed.metrics.sizeRatio < 0.9


def _inspect(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kondense.cli", "inspect", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_inspect_describes_a_foreign_model_and_what_applies(tmp_path):
    path = tmp_path / "paddle.onnx"
    onnx.save(paddle_cnn(), str(path))
    done = _inspect(path, "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["opsets"] == {"ai.onnx": 11}
    assert found["inputs"] == [{"name": "x", "type": "float", "shape": [-1, 3, "H", "W"]}]
    assert found["storage"]["constantNodes"]["nodes"] == 11
    assert found["storage"]["initializers"]["tensors"] == 0
    assert found["parameters"] == 16 * 3 * 9 + 4 * 16 + 32 * 16 * 9 + 32 + 32 * 4
    assert found["ops"]["Conv"] == 2 and found["ops"]["Constant"] == 11
    verdicts = found["techniques"]
    assert verdicts["dynamic-int8"]["applies"] and "3 weight node(s)" in verdicts["dynamic-int8"]["reason"]
    assert "1 quantized by default" in verdicts["dynamic-int8"]["reason"]  # the 2 Conv stay float32
    assert verdicts["fp16"]["applies"]
    # weight-only sees the MatMul's weight although it is a Constant node (intake folds it)
    assert verdicts["weight-only"] == {
        "applies": True,
        "reason": "1 MatMul weight(s) to block-quantize (MatMulNBits/GatherBlockQuantized)",
    }
    assert any("upgrades it to 13" in n for n in found["notes"])
    for name in ("prune", "distill", "low-rank"):  # each has a reason, whichever way it goes
        assert verdicts[name]["reason"]
    text = _inspect(path)
    assert text.returncode == 0 and "dynamic-int8" in text.stdout and "Constant nodes" in text.stdout


def test_inspect_says_why_int8_does_not_apply(tmp_path):
    path = tmp_path / "iffy.onnx"
    onnx.save(if_model(), str(path))
    found = json.loads(_inspect(path, "--json").stdout)
    assert found["techniques"]["dynamic-int8"]["applies"] is False
    assert "subgraphs" in found["techniques"]["dynamic-int8"]["reason"]
    assert found["storage"]["subgraphs"] == {"graphs": 2, "parameters": 64}
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    done = _inspect(bad)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "not a readable ONNX model" in done.stderr


def test_static_tuning_ends_with_weight_ops_only():
    """magika: static QDQ of its hand-written layer norm (ReduceSum/Sqrt/Mul) costs 80 % agreement
    with no weight node to blame; the last rung quantizes only the weight ops' activations."""
    from kondense.compression.passes.quantize import tuning_ladder

    static = pass_for("static-int8", {})
    ladder = tuning_ladder(False, False, ())
    extra = static.extra_rungs(ladder)  # type: ignore[attr-defined]
    # 8-bit weights: reduce-range (7-bit) only when asked for
    weight_ops = {"perChannel": True, "reduceRange": False, "nodesToExclude": [], "weightOpsOnly": True}
    # then the other calibration methods on that configuration (Percentile and Entropy clip outliers)
    assert [c.as_dict() for c in extra] == [
        weight_ops,
        {**weight_ops, "calibrationMethod": "percentile"},
        {**weight_ops, "calibrationMethod": "entropy"},
    ]
    assert pass_for("dynamic-int8", {}).extra_rungs(ladder) == []  # type: ignore[attr-defined]
    assert "weightOpsOnly" not in ladder[0].as_dict()  # unchanged configs for everything else


def _lstm_model() -> onnx.ModelProto:
    """Conv then LSTM (silero-vad's sequence form in miniature): the LSTM's weights are int8-able."""
    rng = np.random.default_rng(0)
    hidden, features = 8, 4
    w = numpy_helper.from_array(rng.normal(size=(1, 4 * hidden, features)).astype(np.float32), "W")
    r = numpy_helper.from_array(rng.normal(size=(1, 4 * hidden, hidden)).astype(np.float32), "R")
    k = numpy_helper.from_array(rng.normal(size=(features, features, 1)).astype(np.float32), "k")
    nodes = [
        helper.make_node("Conv", ["x", "k"], ["c"], name="conv"),  # [N, C, T]
        helper.make_node("Transpose", ["c"], ["seq"], name="to_seq", perm=[2, 0, 1]),  # [T, N, C]
        helper.make_node("LSTM", ["seq", "W", "R"], ["y"], name="lstm", hidden_size=hidden),
    ]
    graph = helper.make_graph(
        nodes,
        "lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, features, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [10, 1, 1, 8])],
        [w, r, k],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def test_inspect_counts_lstm_weights_as_the_int8_passes_do(tmp_path):
    path = tmp_path / "lstm.onnx"
    model = _lstm_model()
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    verdicts = json.loads(_inspect(path, "--json").stdout)["techniques"]
    assert verdicts["dynamic-int8"]["applies"] is True  # the LSTM is quantized, the Conv stays float32
    assert "(1 Conv, 1 LSTM), 1 quantized by default" in verdicts["dynamic-int8"]["reason"]
    assert verdicts["weight-only"]["applies"] is False
    assert "transformer-like" in verdicts["weight-only"]["reason"]

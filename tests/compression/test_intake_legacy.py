"""Intake of legacy IR < 4 models (onnx-caffe2, old PyTorch exports): every initializer is also a graph
input, and weights are computed at run time by ``ConstantOfShape`` from ``*__SHAPE`` initializers.
Intake makes them constants (quantizable), keeps the real inputs and the outputs; ONNX Runtime load
errors read as one sentence without ORT's C++ signature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kondense.compression.errors import UnsupportedModelError
from kondense.compression.intake import normalise, ort_reason
from kondense.compression.passes.fp16 import convert
from kondense.compression.passes.quantize import weight_nodes


def _run(path: Path | str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def caffe2_like() -> onnx.ModelProto:
    """IR 3, opset 9: x(2,8) -> MatMul(w1, a real initializer) -> Add(b) -> Relu -> MatMul(w2, made by
    ConstantOfShape from ``w2__SHAPE``) -> y; every initializer is declared as a graph input too."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 16)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(16,)).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([16, 4], dtype=np.int64), "w2__SHAPE"),
    ]
    nodes = [
        helper.make_node(
            "ConstantOfShape",
            ["w2__SHAPE"],
            ["w2"],
            value=numpy_helper.from_array(np.array([0.25], dtype=np.float32)),
        ),
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["a"]),
        helper.make_node("MatMul", ["a", "w2"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])] + [
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits
    ]
    graph = helper.make_graph(
        nodes, "caffe2_like", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    path = tmp_path / "legacy.onnx"
    onnx.save(caffe2_like(), str(path))
    return path


def _sample() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).normal(size=(2, 8)).astype(np.float32)}


def test_initializer_inputs_become_constants_and_weights_quantizable(legacy: Path, tmp_path: Path) -> None:
    original = onnx.load(str(legacy))
    assert weight_nodes(original) == []  # overridable inputs and a run-time weight: nothing constant

    result = normalise(legacy, tmp_path / "intake", sample=_sample())

    assert result.path != legacy
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model)
    assert model.ir_version >= helper.find_min_ir_version_for(list(model.opset_import))
    assert [v.name for v in model.graph.input] == ["x"]
    assert [v.name for v in model.graph.output] == ["y"]
    assert "ConstantOfShape" not in {n.op_type for n in model.graph.node}
    assert len(weight_nodes(model)) == 2  # both MatMuls read a constant weight now
    record = result.record()
    assert sorted(record["initializerInputsRemoved"]) == ["b", "w1", "w2__SHAPE"]
    assert any("IR version 3 ->" in change for change in record["changes"])
    np.testing.assert_allclose(_run(result.path, _sample())[0], _run(legacy, _sample())[0], rtol=1e-5)


def test_legacy_model_quantizes_dynamically(legacy: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    result = normalise(legacy, tmp_path / "intake", sample=_sample())
    quantized = tmp_path / "int8.onnx"
    # 7-bit weights: on AVX2 without VNNI (AMD EPYC Zen 3, older Xeons) MLAS's u8*s8 kernel adds pairs
    # of products into int16, which 8-bit weights saturate (this model's first row: 22% off there,
    # exact on VNNI); 255 * 63 * 2 fits. The outcome must not depend on the CPU that runs the test.
    quantize_dynamic(str(result.path), str(quantized), reduce_range=True)

    ops = {n.op_type for n in onnx.load(str(quantized)).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    expected = _run(legacy, _sample())[0]
    got = _run(quantized, _sample())[0]
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()


def test_initializer_input_the_user_feeds_stays_an_input(legacy: Path, tmp_path: Path) -> None:
    feed = {**_sample(), "b": np.ones(16, dtype=np.float32)}
    result = normalise(legacy, tmp_path / "intake", sample=feed)

    model = onnx.load(str(result.path))
    assert [v.name for v in model.graph.input] == ["x", "b"]
    assert "b" not in result.record()["initializerInputsRemoved"]
    # ONNX Runtime does not let IR 3 models override initializers; the same graph at IR 7 does
    overridable = caffe2_like()
    overridable.ir_version = 7
    reference = tmp_path / "ir7.onnx"
    onnx.save(overridable, str(reference))
    np.testing.assert_allclose(_run(result.path, feed)[0], _run(reference, feed)[0], rtol=1e-5)


def test_modern_ir_initializer_inputs_are_left_alone(tmp_path: Path) -> None:
    model = caffe2_like()
    model.ir_version = 7  # from IR 4 on, an initializer listed as an input is a deliberate default
    path = tmp_path / "ir7.onnx"
    onnx.save(model, str(path))

    result = normalise(path, tmp_path / "intake", sample=_sample())

    assert result.record()["initializerInputsRemoved"] == []
    out = onnx.load(str(result.path))
    assert {v.name for v in out.graph.input} == {"x", "w1", "b", "w2__SHAPE"}


def test_fp16_load_failure_is_one_sentence_without_cpp_signature() -> None:
    """The IR-3 model converted as is: ORT rejects the float16 initializers behind float32 inputs
    (``Graph::Graph`` prints its C++ signature before the reason)."""
    with pytest.raises(UnsupportedModelError) as caught:
        convert(caffe2_like(), keep_io_types=True, op_block_list=[], node_block_list=[])

    message = str(caught.value)
    assert "onnxruntime::" not in message and "std::" not in message
    assert "[ONNXRuntimeError]" not in message and "graph.cc" not in message
    assert "element type mismatch" in message.lower()
    assert "\n" not in message


def test_ort_reason_strips_prefixes_location_and_signature() -> None:
    raw = (
        "[ONNXRuntimeError] : 1 : FAIL : /onnxruntime_src/onnxruntime/core/graph/graph.cc:1483 "
        "onnxruntime::Graph::Graph(const onnxruntime::Model&, onnx::GraphProto*, const "
        "std::unordered_map<std::__cxx11::basic_string<char>, int>&, onnxruntime::Version, bool) "
        "[ONNXRuntimeError] : 1 : FAIL : Tensor element type mismatch. 10 != 1\n"
    )
    assert ort_reason(raw) == "Tensor element type mismatch. 10 != 1"
    plain = "[ONNXRuntimeError] : 10 : INVALID_GRAPH : This is an invalid model. Error in node (n)"
    assert ort_reason(plain) == "This is an invalid model. Error in node (n)"
    loaded = (
        "[ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model from /tmp/work/step-0/trial-6.onnx "
        'failed:This is an invalid model. In Node, ("n", Conv) : error'
    )
    assert ort_reason(loaded) == 'This is an invalid model. In Node, ("n", Conv) : error'
    assert ort_reason("something else\nsecond line") == "something else second line"


def test_inspect_predicts_what_intake_makes_of_a_legacy_model(legacy: Path) -> None:
    from kondense.compression.inspect_model import inspect

    inspection = inspect(legacy)

    assert [v["name"] for v in inspection.inputs] == ["x"]
    assert inspection.techniques["dynamic-int8"]["applies"]
    assert inspection.techniques["static-int8"]["applies"]
    assert any("IR 3" in note for note in inspection.notes)


def test_a_variant_that_grows_past_the_base_is_refused_in_one_sentence(tmp_path: Path) -> None:
    """A caffe2-style model whose big weight is a ConstantOfShape fill: intake folds it, so every variant
    stores it and is many times the base file. That is refused before evaluation, with the sizes."""
    from kondense.compression.pipeline import MAX_GROWTH, DataFiles, compress_model

    model = caffe2_like()
    shape = next(t for t in model.graph.initializer if t.name == "w2__SHAPE")
    shape.CopyFrom(numpy_helper.from_array(np.array([16, 4096], dtype=np.int64), "w2__SHAPE"))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4096]))
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8]))
    onnx.checker.check_model(model)
    base = tmp_path / "base.onnx"
    onnx.save(model, base)
    data = tmp_path / "eval.npz"
    np.savez(data, x=np.random.default_rng(1).normal(size=(8, 8)).astype(np.float32))
    with pytest.raises(UnsupportedModelError) as refused:
        compress_model(base, {"name": "half", "steps": [{"technique": "fp16"}]}, DataFiles(evaluation=data),
                       tmp_path / "out", task="regression", latency_runs=10)  # fmt: skip
    message = str(refused.value)
    assert "the base's size" in message and "\n" not in message
    assert message.startswith(f"{base}: target 'half': fp16 made a variant")  # the user's model
    grown = float(message.split("made a variant ")[1].split("x")[0])
    assert grown > MAX_GROWTH
    assert not (tmp_path / "out").exists()

"""Targets, pipelines, provenance and atomic output."""

from __future__ import annotations

import json

import pytest

from kondense.api.artifacts import MANIFEST_FILE, MODEL_FILE, Manifest, sha256_file
from kondense.api.techniques import Technique
from kondense.compression.errors import BadInputError
from kondense.compression.pipeline import DataFiles, compress_model, parse_target


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"technique": "fp16"}, r"target.name: must be a non-empty string"),
        ({"name": "x", "technique": "svd"}, r"target.technique: unknown technique 'svd'"),
        (
            {"name": "x", "technique": "prune", "params": {"amount": 1.5}},
            r"target.params: amount: .*less than 1",
        ),
        (
            {"name": "x", "technique": "prune", "params": {"amout": 0.5}},
            r"target.params: amout: Extra inputs",
        ),
        ({"name": "x", "technique": "fp16", "steps": []}, r"exactly one of"),
        (
            {"name": "x", "steps": [{"technique": "fp16"}, {"technique": "nope"}]},
            r"target.steps\[1\].technique",
        ),
        (
            {"name": "x", "technique": "fp16", "maxAccuracyDelta": -1},
            r"maxAccuracyDelta: must be a number >= 0",
        ),
        ({"name": "x", "technique": "fp16", "color": "red"}, r"unknown field\(s\) \['color'\]"),
    ],
)
def test_bad_targets_name_the_field(raw, message):
    with pytest.raises(BadInputError, match=message):
        parse_target(raw)


def test_target_defaults_are_filled_in():
    spec = parse_target(
        {
            "name": "p",
            "steps": [{"technique": "prune", "params": {"structured": True}}, {"technique": "static-int8"}],
        }
    )
    assert [s.technique for s in spec.steps] == [Technique.PRUNE, Technique.STATIC_INT8]
    assert spec.steps[0].params["amount"] == 0.5 and spec.steps[0].params["structured"] is True
    assert spec.steps[1].params["calibrationMethod"] == "minmax"
    assert spec.technique_label == "prune+static-int8"


def test_pipeline_manifest_has_full_provenance(digits, tmp_path):
    target = {
        "name": "small",
        "steps": [
            {"technique": "prune", "params": {"amount": 0.5, "structured": True, "fineTuneEpochs": 3}},
            {"technique": "static-int8", "params": {"calibrationMethod": "percentile"}},
        ],
        "maxAccuracyDelta": 0.05,
    }
    data = DataFiles(evaluation=digits.eval, calibration=digits.calib, train=digits.train)
    manifest = compress_model(digits.model, target, data, tmp_path / "out", latency_runs=20)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_FILE, MODEL_FILE]
    on_disk = Manifest.model_validate_json((out / MANIFEST_FILE).read_text())
    assert on_disk.artifact.sha256 == sha256_file(out / MODEL_FILE) == manifest.artifact.sha256
    assert on_disk.artifact.sizeBytes == (out / MODEL_FILE).stat().st_size
    assert on_disk.base.sha256 == sha256_file(digits.model)
    assert [s.technique for s in on_disk.steps] == [Technique.PRUNE, Technique.STATIC_INT8]
    assert on_disk.steps[1].params["calibrationMethod"] == "percentile"
    assert {"onnx", "onnxruntime", "torch", "torch-pruning"} <= set(on_disk.tools)
    assert on_disk.gate is not None and on_disk.gate.maxAccuracyDelta == 0.05 and on_disk.gate.passed
    assert (
        on_disk.metrics.sizeRatio is not None and on_disk.metrics.sizeRatio < 0.1
    )  # channels removed, then int8
    raw = json.loads((out / MANIFEST_FILE).read_text())
    assert raw["data"]["evaluation"]["sha256"] == sha256_file(digits.eval)
    assert raw["data"]["train"]["sha256"] == sha256_file(digits.train)
    assert all(t["step"] == 1 for t in raw["trials"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_failure_leaves_nothing_half_written(digits, tmp_path):
    target = {
        "name": "bad",
        "steps": [{"technique": "fp16"}, {"technique": "distill", "params": {"keepLayers": [1]}}],
    }
    with pytest.raises(BadInputError):
        compress_model(
            digits.model, target, DataFiles(evaluation=digits.eval, train=digits.train), tmp_path / "out"
        )
    assert list(tmp_path.iterdir()) == []


def test_rerun_replaces_a_previous_variant_but_never_mixes_with_foreign_files(digits, tmp_path):
    out = tmp_path / "out"
    data = DataFiles(evaluation=digits.eval)
    first = compress_model(digits.model, {"name": "a", "technique": "fp16"}, data, out, latency_runs=10)
    second = compress_model(
        digits.model, {"name": "b", "technique": "dynamic-int8"}, data, out, latency_runs=10
    )
    assert first.artifact.sha256 != second.artifact.sha256
    assert Manifest.model_validate_json((out / MANIFEST_FILE).read_text()).name == "b"
    assert sha256_file(out / MODEL_FILE) == second.artifact.sha256
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BadInputError, match=r"holds other files \['notes.txt'\]"):
        compress_model(digits.model, {"name": "c", "technique": "fp16"}, data, out, latency_runs=10)
    assert sha256_file(out / MODEL_FILE) == second.artifact.sha256


def test_missing_training_data_is_bad_input(digits, tmp_path):
    with pytest.raises(BadInputError, match="needs training"):
        compress_model(
            digits.model,
            {"name": "d", "technique": "distill"},
            DataFiles(evaluation=digits.eval),
            tmp_path / "d",
        )


def paddle_style_classifier(path):
    """A small CNN written the way paddle2onnx writes the PaddleOCR text-direction classifier:
    HardSwish, squeeze-excite blocks gated by HardSigmoid whose conv bias is a separate
    Add(Reshape(b)), a flatten to [Shape(x)[0], channels], a dynamic batch and dynamic H x W."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.standard_normal(shape) * (2.0 / np.prod(shape[1:])) ** 0.5).astype(np.float32)

    inits = {
        "c1": w(8, 3, 3, 3), "c1b": np.zeros(8, np.float32),
        "bn_s": np.ones(8, np.float32), "bn_b": np.zeros(8, np.float32),
        "bn_m": rng.standard_normal(8).astype(np.float32) * 0.1, "bn_v": np.ones(8, np.float32),
        "se1": w(4, 8, 1, 1), "se1b": np.full(4, 0.1, np.float32), "se2": w(8, 4, 1, 1),
        "se2b": np.full(8, 0.2, np.float32), "bias_shape": np.array([1, 8, 1, 1], np.int64),
        "c2": w(16, 8, 3, 3), "c2b": np.zeros(16, np.float32),
        "zero": np.array([0], np.int64), "one": np.array([1], np.int64), "width": np.array([16], np.int64),
        "fc": rng.standard_normal((16, 4)).astype(np.float32) * 0.5,
        "fcb": np.zeros(4, np.float32),
    }  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "c1", "c1b"], ["a"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["a", "bn_s", "bn_b", "bn_m", "bn_v"], ["b"]),
        helper.make_node("HardSwish", ["b"], ["h"]),
        helper.make_node("GlobalAveragePool", ["h"], ["p"]),
        helper.make_node("Conv", ["p", "se1", "se1b"], ["s1"]),
        helper.make_node("Relu", ["s1"], ["r1"]),
        helper.make_node("Conv", ["r1", "se2"], ["s2a"]),  # paddle2onnx: bias added after the conv
        helper.make_node("Reshape", ["se2b", "bias_shape"], ["se2b4"]),
        helper.make_node("Add", ["s2a", "se2b4"], ["s2"]),
        helper.make_node("HardSigmoid", ["s2"], ["gate"], alpha=0.2, beta=0.5),
        helper.make_node("Mul", ["h", "gate"], ["e"]),
        helper.make_node("Conv", ["e", "c2", "c2b"], ["f"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["f"], ["fr"]),
        helper.make_node("GlobalAveragePool", ["fr"], ["g"]),
        helper.make_node("Shape", ["g"], ["shape"]),
        helper.make_node("Cast", ["shape"], ["shape32"], to=TensorProto.INT32),
        helper.make_node("Slice", ["shape32", "zero", "one", "zero"], ["batch32"]),
        helper.make_node("Cast", ["batch32"], ["batch"], to=TensorProto.INT64),
        helper.make_node("Concat", ["batch", "width"], ["target"], axis=0),  # [N, 16]: channels as a constant
        helper.make_node("Reshape", ["g", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["logits0"]),
        helper.make_node("Add", ["logits0", "fcb"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(a, n) for n, a in inits.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.mark.parametrize(
    "step",
    [
        {"technique": "prune", "params": {"amount": 0.5, "structured": True, "fineTuneEpochs": 2}},
        {"technique": "distill", "params": {"widthMultiplier": 0.5, "epochs": 2}},
    ],
    ids=["structured-prune", "distill-width"],
)
def test_paddle_style_classifier_is_pruned_and_distilled_with_dynamic_axes_kept(tmp_path, step):
    import numpy as np
    import onnxruntime as ort

    paddle_style_classifier(tmp_path / "cls.onnx")
    base = ort.InferenceSession(str(tmp_path / "cls.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for name, count in (("train", 64), ("eval", 32)):
        x = rng.standard_normal((count, 3, 16, 24)).astype(np.float32)
        np.savez(tmp_path / f"{name}.npz", x=x, labels=base.run(None, {"x": x})[0].argmax(1))
    data = DataFiles(evaluation=tmp_path / "eval.npz", train=tmp_path / "train.npz")
    manifest = compress_model(
        tmp_path / "cls.onnx", {"name": "small", "steps": [step]}, data, tmp_path / "out", latency_runs=5
    )
    details = manifest.steps[0].details
    counts = details if step["technique"] == "prune" else details["student"]
    assert counts["parametersAfter"] < 0.7 * counts["parametersBefore"]  # channels really removed
    variant = ort.InferenceSession(str(tmp_path / "out" / MODEL_FILE), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, 16, 24), (5, 3, 32, 40)):  # other batch and H x W than the traced example
        probs = variant.run(None, {"x": rng.standard_normal(shape).astype(np.float32)})[0]
        assert probs.shape == (shape[0], 4)
        np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)

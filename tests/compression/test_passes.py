"""Each pass on the real digits CNN: real ORT quantization, real torch training, real numbers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kondense.api.techniques import Task
from kondense.compression.data import load_npz
from kondense.compression.errors import BadInputError, UnsupportedModelError
from kondense.compression.evaluation import model_outputs
from kondense.compression.onnx_torch import build_module, export_onnx, to_torch
from kondense.compression.passes import pass_for, registered_techniques
from kondense.compression.passes.low_rank import factor
from kondense.compression.passes.quantize import tuning_ladder
from kondense.compression.pipeline import DataFiles, compress_model


def compress(digits, tmp_path, target, **kwargs):
    data = DataFiles(evaluation=digits.eval, calibration=digits.calib, train=digits.train)
    kwargs.setdefault("latency_runs", 20)
    return compress_model(digits.model, target, data, tmp_path / target["name"], **kwargs)


def test_every_technique_is_registered():
    assert {t.value for t in registered_techniques()} == {
        "dynamic-int8", "static-int8", "fp16", "prune", "distill", "low-rank", "weight-only",
    }  # fmt: skip
    with pytest.raises(ValueError):
        pass_for("svd")


def test_tuning_ladder_goes_from_fast_to_accurate_and_respects_user_choices():
    ladder = tuning_ladder(False, False, ())
    assert [(c.per_channel, c.reduce_range) for c in ladder] == [(False, False), (True, False), (True, True)]
    assert [(c.per_channel, c.reduce_range) for c in tuning_ladder(True, False, ("n",))] == [
        (True, False),
        (True, True),
    ]
    assert all(c.exclude == ("n",) for c in tuning_ladder(True, False, ("n",)))


@pytest.mark.parametrize("technique", ["static-int8", "dynamic-int8"])
def test_int8_is_about_four_times_smaller_and_accurate(digits, tmp_path, technique):
    manifest = compress(
        digits, tmp_path, {"name": technique, "technique": technique}, max_accuracy_delta=0.005
    )
    # dynamic-int8 keeps the two convolutions (1/8 of the weights) float32 by default: slow ConvInteger
    assert manifest.metrics.sizeRatio < (0.29 if technique == "static-int8" else 0.4)
    assert manifest.metrics.accuracyDelta <= 0.005
    assert manifest.gate.passed
    assert manifest.trials[0].config == {"perChannel": False, "reduceRange": False, "nodesToExclude": []}
    ops = {n.op_type for n in onnx.load(str(tmp_path / technique / "model.onnx")).graph.node}
    assert (
        ("QuantizeLinear" in ops)
        if technique == "static-int8"
        else ("MatMulInteger" in ops and "ConvInteger" not in ops and "Conv" in ops)
    )
    assert manifest.steps[0].details["preprocessed"] is (technique == "static-int8")


def test_unreachable_budget_tries_everything_and_fails_the_gate(digits, tmp_path):
    # Regression on logits: any int8 rounding gives a non-zero relative MAE, so 1e-9 is out of reach.
    manifest = compress(
        digits,
        tmp_path,
        {"name": "tight", "technique": "dynamic-int8"},
        task=Task.REGRESSION,
        max_accuracy_delta=1e-9,
    )
    assert not manifest.gate.passed
    messages = [t.message or "" for t in manifest.trials]
    assert len([m for m in messages if m == ""]) == 3  # per-tensor, per-channel, reduce-range
    fallbacks = [t for t in manifest.trials if (t.message or "").startswith("float32: the ")]
    counts = [len(t.config["nodesToExclude"]) for t in fallbacks]
    assert counts and counts[0] == 1 and counts == sorted(counts)  # doubling from one node
    details = manifest.steps[0].details
    assert details["sensitivityDb"]  # the ranking is in the manifest, most sensitive first
    assert "not reached" in details["tuning"] and "most accurate configuration is kept" in details["tuning"]
    assert (tmp_path / "tight" / "model.onnx").is_file()  # the artifact is written anyway
    # the kept variant is the most accurate trial, every trial measured on the full eval set
    assert all(t.evalSamples == len(np.load(digits.eval)["labels"]) for t in manifest.trials)
    best = min(t.accuracyDelta for t in manifest.trials)
    assert manifest.metrics.accuracyDelta == pytest.approx(best, rel=1e-6)


def test_fp16_halves_the_size_and_keeps_float32_io(digits, tmp_path):
    manifest = compress(digits, tmp_path, {"name": "half", "technique": "fp16"})
    assert 0.45 < manifest.metrics.sizeRatio < 0.55
    assert manifest.metrics.accuracyDelta <= 0.005
    model = onnx.load(str(tmp_path / "half" / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT


def test_unstructured_prune_reports_sparsity_honestly(digits, tmp_path):
    manifest = compress(digits, tmp_path, {"name": "sparse", "technique": "prune", "params": {"amount": 0.6}})
    details = manifest.steps[0].details
    assert details["weightSparsity"] == pytest.approx(0.6, abs=0.01)
    assert manifest.metrics.sizeRatio > 0.95  # dense storage: the file does not shrink
    assert "do not drop" in details["note"]
    assert manifest.metrics.accuracyDelta <= 0.02


def test_structured_prune_removes_channels(digits, tmp_path):
    target = {
        "name": "narrow",
        "technique": "prune",
        "params": {"amount": 0.5, "structured": True, "fineTuneEpochs": 5},
    }
    manifest = compress(digits, tmp_path, target)
    details = manifest.steps[0].details
    assert details["parametersAfter"] < 0.3 * details["parametersBefore"]
    assert manifest.metrics.sizeRatio < 0.3
    assert manifest.metrics.accuracyDelta <= 0.03
    weights = [
        numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "narrow" / "model.onnx")).graph.initializer
    ]
    assert max(w.shape[0] for w in weights if w.ndim == 4) == 32  # conv2 went from 64 to 32 channels


def test_structured_prune_that_torch_pruning_cannot_trace_is_one_sentence(digits):
    """What torch-pruning raises while it traces channel groups (here: an example of the wrong shape;
    on the dynamo encoder exports an IndexError past a layer's channels) becomes a refusal naming the
    alternatives, never a traceback."""
    import torch

    from kondense.compression.model_files import load_model
    from kondense.compression.passes.prune import shrink_channels

    module = build_module(load_model(digits.model), "digits.onnx", traceable=True)
    with pytest.raises(UnsupportedModelError) as refused:
        shrink_channels(module, (torch.zeros(2, 3),), 0.5, "digits.onnx")
    message = str(refused.value)
    assert "structured pruning could not trace which channels are coupled" in message
    assert "structured: false" in message and "\n" not in message


def test_distill_cnn_student(digits, tmp_path):
    target = {"name": "student", "technique": "distill", "params": {"widthMultiplier": 0.5, "epochs": 15}}
    manifest = compress(digits, tmp_path, target)
    assert manifest.metrics.sizeRatio < 0.3
    assert manifest.metrics.accuracyDelta <= 0.02
    assert manifest.steps[0].details["loss"][-1] < manifest.steps[0].details["loss"][0]


def test_distill_mlp_student(digits, tmp_path):
    target = {
        "name": "mlp",
        "technique": "distill",
        "params": {"hiddenSizes": [128], "epochs": 40, "learningRate": 0.005},
    }
    manifest = compress(digits, tmp_path, target)
    assert manifest.metrics.sizeRatio < 0.1
    assert manifest.metrics.accuracyDelta <= 0.06
    assert manifest.steps[0].details["student"] == {"kind": "mlp", "hiddenSizes": [128]}


def test_distill_layer_selection_needs_numbered_layers(digits, tmp_path):
    with pytest.raises(UnsupportedModelError, match="no numbered transformer layers"):
        compress(digits, tmp_path, {"name": "layers", "technique": "distill", "params": {"keepLayers": [0]}})


def test_low_rank_factor_is_exact_for_low_rank_matrices():
    rng = np.random.default_rng(0)
    matrix = (rng.normal(size=(64, 4)) @ rng.normal(size=(4, 32))).astype(np.float32)
    a, b, energy = factor(matrix, 4 / 32)
    assert a.shape == (64, 4) and b.shape == (4, 32)
    np.testing.assert_allclose(a @ b, matrix, atol=1e-4)
    assert energy == pytest.approx(1.0)


def test_low_rank_pass_factors_the_big_dense_layer(digits, tmp_path):
    target = {"name": "lr", "technique": "low-rank", "params": {"rankRatio": 0.25, "fineTuneEpochs": 2}}
    manifest = compress(digits, tmp_path, target)
    layers = {r["node"]: r for r in manifest.steps[0].details["layers"]}
    assert any(r["factored"] and r["rank"] == 32 for r in layers.values())
    assert any(not r["factored"] and r["reason"] == "below minDim" for r in layers.values())
    assert manifest.metrics.sizeRatio < 0.5
    assert manifest.metrics.accuracyDelta <= 0.02


def test_onnx_torch_round_trip_is_exact(digits, tmp_path):
    module, signature = to_torch(digits.model)
    evaluation = load_npz(digits.eval).take(32)
    export_onnx(module, signature, {"input": evaluation.inputs["input"][:1]}, tmp_path / "rt.onnx")
    np.testing.assert_allclose(
        model_outputs(tmp_path / "rt.onnx", evaluation), model_outputs(digits.model, evaluation), atol=1e-5
    )


def test_unsupported_ops_are_named():
    graph = helper.make_graph(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="pick")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.array([2], np.int64), "k")],
    )  # fmt: skip
    with pytest.raises(UnsupportedModelError, match=r"model.onnx: op types not supported .*TopK \(pick\)"):
        build_module(helper.make_model(graph), "model.onnx")


def test_static_int8_without_calibration_is_bad_input(digits, tmp_path):
    with pytest.raises(BadInputError, match="calibration"):
        compress_model(
            digits.model,
            {"name": "s", "technique": "static-int8"},
            DataFiles(evaluation=digits.eval),
            tmp_path / "s",
        )
    assert not (tmp_path / "s").exists()


def test_fp16_output_of_a_cast_to_float_loads_in_ort(tmp_path):
    # attention masks are cast from int64 to float inside transformer graphs (MiniLM has one)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["m", "w"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("mask", TensorProto.INT64, [None, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 256])],
        # enough weights for float16 to make the model smaller (else fp16 refuses it)
        [numpy_helper.from_array(np.arange(256, dtype=np.float32), "w")],
    )
    source = tmp_path / "cast.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), source)
    evaluation = tmp_path / "eval.npz"
    np.savez(evaluation, mask=np.ones((3, 256), np.int64))
    manifest = compress_model(
        source, {"name": "h", "technique": "fp16"}, DataFiles(evaluation=evaluation), tmp_path / "out",
        task=Task.REGRESSION, latency_runs=10,
    )  # fmt: skip
    assert manifest.steps[0].details["castsAligned"] == 1
    assert manifest.metrics.accuracyDelta == 0.0


def test_fallback_keeps_only_a_full_set_trial_whatever_the_cpu():
    # Regression (Intel AMX/VNNI): a probe measured on a 128-sample subset had a lower delta than every
    # full-set trial and was kept. The choice must not depend on which kernel produced which numbers.
    from kondense.api.artifacts import Trial
    from kondense.compression.passes.quantize import most_accurate_full_trial

    trials = [
        Trial(config={}, accuracyDelta=0.0034, evalSamples=500),
        Trial(config={}, accuracyDelta=0.0031, evalSamples=500),
        Trial(config={}, accuracyDelta=0.0001, evalSamples=128, message="sensitivity baseline"),
        Trial(config={}, accuracyDelta=0.0002, evalSamples=128, message="sensitivity of conv1"),
        Trial(config={}, accuracyDelta=0.0033, evalSamples=500, message="float32: conv1"),
    ]
    assert most_accurate_full_trial(trials, 500) == 1
    with pytest.raises(ValueError):
        most_accurate_full_trial(trials[2:4], 500)

"""Structured pruning on graphs that third-party exporters write: what it may remove, and what the
pruned module exports as.

Small graphs built with ``onnx.helper``: attention-like Reshapes to constant head shapes (paddle's OCR
recogniser), Conv + BatchNormalization + HardSigmoid·x + GlobalAveragePool (a TorchScript MobileNet).
Every variant is exported and run in ONNX Runtime against the torch module it came from.
"""

from __future__ import annotations

from collections import Counter
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
from kondense.compression.onnx_torch import build_module, export_onnx
from kondense.compression.passes.prune import (
    CHANNEL_BLOCK,
    kept_channels,
    layers_held_by_reshapes,
    prunable_layers,
    shrink_channels,
)

rng = np.random.default_rng(0)


def f32(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def model_of(nodes: list[Any], inputs: list[Any], output: str, inits: dict[str, np.ndarray]) -> Any:
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_empty_tensor_value_info(output)],
        [numpy_helper.from_array(a, n) for n, a in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(inferred)
    return inferred


def ort_run(model: Any, feed: dict[str, np.ndarray]) -> np.ndarray:
    data = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def heads_model(head_shape: tuple[int, int] = (3, 8)) -> Any:
    """x[N, 16] -> Linear 24 -> Reshape [0, 3, 8] (heads) -> Relu -> Reshape [0, 24] -> Linear 32 ->
    Relu -> Linear 10: the first layer's 24 channels are fixed by the head shape, the second's free."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="q_proj"),
        helper.make_node("Add", ["m1", "b1"], ["a1"]),
        helper.make_node("Reshape", ["a1", "heads"], ["h"], name="split_heads"),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Reshape", ["hr", "merged"], ["r"], name="merge_heads"),
        helper.make_node("MatMul", ["r", "w2"], ["m2"]),
        helper.make_node("Add", ["m2", "b2"], ["a2"]),
        helper.make_node("Relu", ["a2"], ["r2"]),
        helper.make_node("MatMul", ["r2", "w3"], ["m3"]),
        helper.make_node("Add", ["m3", "b3"], ["y"]),
    ]
    inits = {
        "w1": f32(16, 24), "b1": f32(24), "heads": np.array([0, *head_shape], np.int64),
        "merged": np.array([0, 24], np.int64), "w2": f32(24, 32), "b2": f32(32), "w3": f32(32, 10),
        "b3": f32(10),
    }  # fmt: skip
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    return model_of(nodes, [x], "y", inits)


def test_layers_feeding_a_constant_head_reshape_keep_their_channels_and_the_rest_is_pruned(tmp_path: Path):
    """paddle-rec: channels removed before a Reshape to [N, T, 3, 8, 15] broke it ('shape ... is
    invalid for input of size ...', a torch error the user saw). The layer feeding it is held; the
    others are pruned, and the variant runs in ONNX Runtime as the pruned module does."""
    model = heads_model()
    module = build_module(model, "heads.onnx", traceable=True)
    layers = prunable_layers(module)
    held = layers_held_by_reshapes(module)
    assert list(held) == [layers[0]] and "split_heads" in held[layers[0]]
    x = f32(4, 16)
    stats = shrink_channels(module, (torch.from_numpy(x[:2]),), 0.5, "heads.onnx")
    assert stats["parametersAfter"] < stats["parametersBefore"]
    assert layers[0].out_features == 24  # held: the head shape still fits
    assert layers[1].out_features == 16  # free: 32 -> 16

    path = tmp_path / "pruned.onnx"
    export_onnx(module, signature_of(model), {"x": x[:2]}, path)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    got = ort_run(str(path), {"x": x})  # another batch than the traced one
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert path.stat().st_size < model.ByteSize()


def test_structured_pruning_with_every_layer_held_by_reshapes_is_one_sentence_naming_the_reshape():
    """x -> Linear 24 -> Reshape [0, 3, 8] -> Reshape [0, 24] -> Linear 10: the only prunable layer
    feeds the head reshape; the refusal names it instead of a torch shape error."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"]),
        helper.make_node("Add", ["m1", "b1"], ["a1"]),
        helper.make_node("Reshape", ["a1", "heads"], ["h"], name="split_heads"),
        helper.make_node("Reshape", ["h", "merged"], ["r"], name="merge_heads"),
        helper.make_node("MatMul", ["r", "w3"], ["y"]),
    ]
    inits = {
        "w1": f32(16, 24), "b1": f32(24), "heads": np.array([0, 3, 8], np.int64),
        "merged": np.array([0, 24], np.int64), "w3": f32(24, 10),
    }  # fmt: skip
    model = model_of(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])], "y", inits)
    module = build_module(model, "heads.onnx", traceable=True)
    with pytest.raises(UnsupportedModelError) as refused:
        shrink_channels(module, (torch.zeros(2, 16),), 0.5, "heads.onnx")
    message = str(refused.value)
    assert "no channel it may remove" in message and "split_heads (Reshape)" in message
    assert "\n" not in message and "invalid for input" not in message


def test_reshapes_that_keep_channels_free_hold_nothing():
    """[0, -1] (a flatten) and [0, 1, -1] say nothing about the channel count: no layer is held."""
    for target in ([0, -1], [0, 1, -1]):
        nodes = [
            helper.make_node("MatMul", ["x", "w1"], ["m1"]),
            helper.make_node("Relu", ["m1"], ["r1"]),
            helper.make_node("Reshape", ["r1", "t"], ["h"]),
            helper.make_node("Flatten", ["h"], ["f"]),
            helper.make_node("MatMul", ["f", "w2"], ["y"]),
        ]
        inits = {"w1": f32(16, 24), "t": np.array(target, np.int64), "w2": f32(24, 10)}
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
        module = build_module(model_of(nodes, [x], "y", inits), "flat.onnx", traceable=True)
        assert module.fixed_reshapes == [] and layers_held_by_reshapes(module) == {}


def mobilenet_block() -> Any:
    """What a TorchScript export of a MobileNet block writes without constant folding: Conv ->
    BatchNormalization -> x * HardSigmoid(x) (hard swish) -> Conv 1x1 -> Relu -> GlobalAveragePool
    -> Flatten -> Gemm."""
    nodes = [
        helper.make_node("Conv", ["x", "c1"], ["c1o"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["c1o", "s", "b", "m", "v"], ["bn"]),
        helper.make_node("HardSigmoid", ["bn"], ["hs"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["bn", "hs"], ["sw"]),
        helper.make_node("Conv", ["sw", "c2", "c2b"], ["c2o"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c2o"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1),
    ]
    inits = {
        "c1": f32(32, 4, 3, 3), "s": np.abs(f32(32)) + 0.5, "b": f32(32), "m": f32(32) * 0.1,
        "v": np.abs(f32(32)) + 0.5, "c2": f32(64, 32, 1, 1), "c2b": f32(64), "fc": f32(10, 64), "fcb": f32(10),
    }  # fmt: skip
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])
    return model_of(nodes, [x], "y", inits)


def ops_of(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_converted_mobilenet_block_exports_no_more_ops_than_it_had(tmp_path: Path):
    """The torch-cnn-ts exports came back 3x slower: every HardSigmoid became Mul/Add/Clip (plus
    Constant nodes), each BatchNormalization sat unfused behind Shape/Reshape, GlobalAveragePool
    became ReduceMean. Re-exported, the block has the base's ops (the norm folded into its Conv)."""
    model = mobilenet_block()
    module = build_module(model, "block.onnx", traceable=True)
    x = f32(3, 4, 8, 8)
    path = tmp_path / "block.onnx"
    export_onnx(module, signature_of(model), {"x": x[:2]}, path)
    ops = ops_of(path)
    assert ops["HardSigmoid"] == 1 and ops["GlobalAveragePool"] == 1
    assert not {"Clip", "Shape", "Reshape", "BatchNormalization", "ReduceMean", "Constant"} & set(ops)
    assert sum(ops.values()) < len(model.graph.node)  # the norm folded into the convolution
    np.testing.assert_allclose(ort_run(str(path), {"x": x}), ort_run(model, {"x": x}), rtol=1e-4, atol=1e-4)


def test_hard_sigmoid_trains_like_its_formula():
    """The exportable HardSigmoid has the gradient of clamp(alpha * x + beta, 0, 1)."""
    model = mobilenet_block()
    module = build_module(model, "block.onnx", traceable=True)
    step = next(fn for ins, outs, fn in module.program if outs == ["hs"])
    x = torch.linspace(-5, 5, 41, requires_grad=True)
    step(x).sum().backward()
    reference = x.detach().clone().requires_grad_(True)
    torch.clamp(reference / 6 + 0.5, 0.0, 1.0).sum().backward()
    assert x.grad is not None and reference.grad is not None
    torch.testing.assert_close(x.grad, reference.grad)


def test_kept_channel_counts_stay_whole_blocks():
    assert CHANNEL_BLOCK == 8
    assert kept_channels(32, 0.03) == 32  # 31 would leave the blocked kernels: nothing removed instead
    assert kept_channels(32, 0.25) == 24
    assert kept_channels(64, 0.5) == 32
    assert kept_channels(16, 0.9) == 8  # at least one block
    assert kept_channels(10, 0.5) == 5  # not a block multiple to begin with: as torch-pruning counts
    assert kept_channels(3, 0.9) == 1


def test_pruned_mobilenet_block_keeps_block_multiples_and_runs_in_ort(tmp_path: Path):
    """A prune that would cut 32 channels to 31 (ONNX Runtime then leaves its NCHWc convolutions,
    measured 3x slower on a smaller model) keeps whole blocks; one that removes nothing says so."""
    model = mobilenet_block()
    x = f32(3, 4, 8, 8)
    module = build_module(model, "block.onnx", traceable=True)
    with pytest.raises(UnsupportedModelError) as refused:
        shrink_channels(module, (torch.from_numpy(x[:2]),), 0.03, "block.onnx")
    assert "removes none" in str(refused.value) and "multiples of 8" in str(refused.value)

    module = build_module(model, "block.onnx", traceable=True)
    shrink_channels(module, (torch.from_numpy(x[:2]),), 0.3, "block.onnx")
    path = tmp_path / "pruned.onnx"
    export_onnx(module, signature_of(model), {"x": x[:2]}, path)
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    channels = sorted(w.shape[0] for w in weights.values() if w.ndim == 4)
    assert channels == [24, 48]  # 32 -> 24 and 64 -> 48: the multiples of 8 nearest to 70% (22.4, 44.8)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ort_run(str(path), {"x": x}), expected, rtol=1e-4, atol=1e-4)


def test_training_keeps_batch_norm_statistics_and_trains_the_rest():
    """The training passes start from the base's weights on few samples: batch statistics of 16
    samples and the running averages they move made a detector's student worse than where it
    started. The norm's statistics stay; its scale, shift and the convolutions train."""
    from kondense.api.techniques import Task
    from kondense.compression.data import Dataset
    from kondense.compression.passes import SilentProgress
    from kondense.compression.training import TrainingSettings, train_against_teacher

    model = mobilenet_block()
    module = build_module(model, "block.onnx", traceable=True)
    norm = next(m for m in module.modules() if isinstance(m, torch.nn.BatchNorm1d))
    assert norm.running_mean is not None
    mean, scale = norm.running_mean.clone(), norm.weight.detach().clone()
    x = f32(16, 4, 8, 8) * 3 + 1  # other statistics than the norm's
    teacher = ort_run(model, {"x": x}) + 0.5  # a target the student does not already give
    losses = train_against_teacher(
        module,
        signature_of(model),
        Dataset("train.npz", {"x": x}),
        teacher,
        Task.REGRESSION,
        TrainingSettings(epochs=5, learning_rate=1e-2, batch_size=8),
        SilentProgress(),
        "train",
    )
    assert losses[-1] < losses[0]
    torch.testing.assert_close(norm.running_mean, mean)
    assert not torch.equal(norm.weight.detach(), scale)
    assert not norm.training and not module.training


def test_a_coupling_the_analysis_misses_is_refused_naming_the_node_that_broke():
    """Were a constant-shape Reshape not seen (here: the converter's record of it dropped), the torch
    error of the check run becomes one sentence naming the ONNX node and op, not torch's alone."""
    module = build_module(heads_model(), "heads.onnx", traceable=True)
    module.fixed_reshapes = []
    with pytest.raises(UnsupportedModelError) as refused:
        shrink_channels(module, (torch.zeros(2, 16),), 0.5, "heads.onnx")
    message = str(refused.value)
    assert "removed channels that node split_heads (Reshape) still expects" in message
    assert "structured: false" in message and "\n" not in message

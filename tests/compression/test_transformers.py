"""Transformer graphs (run-time shape arithmetic, dynamic axes): layer-subset distillation and the
passes that train in place and write weights back into the same graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from kondense.api.techniques import Task
from kondense.compression.errors import BadInputError, UnsupportedModelError
from kondense.compression.onnx_torch import build_module
from kondense.compression.pipeline import DataFiles, compress_model
from kondense.compression.transformer_layers import find_layers


class TinyLayer(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (
            nn.Linear(width, width),
            nn.Linear(width, width),
            nn.Linear(width, width),
        )
        self.out = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        context = (q @ k.transpose(-1, -2) / 2.0).softmax(-1) @ v
        return self.norm(x + self.out(context.transpose(1, 2).reshape(batch, length, width)))


class TinyEncoder(nn.Module):
    """Token embeddings, three post-norm encoder layers (named ``layers.N``), mean pooling."""

    def __init__(self, vocab: int = 50, width: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList(TinyLayer(width, heads) for _ in range(3))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return x.mean(1)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    with torch.no_grad():
        torch.onnx.export(
            model, (torch.zeros(2, 7, dtype=torch.int64),), str(root / "model.onnx"), input_names=["ids"],
            output_names=["embedding"], dynamic_axes={"ids": {0: "b", 1: "n"}, "embedding": {0: "b"}},
            opset_version=17, dynamo=False,
        )  # fmt: skip
    rng = np.random.default_rng(0)
    np.savez(root / "train.npz", ids=rng.integers(0, 50, (96, 9)))
    np.savez(root / "eval.npz", ids=rng.integers(0, 50, (32, 9)))
    return root


def test_layers_are_found_by_name(encoder):
    spans = find_layers(onnx.load(str(encoder / "model.onnx")), "model.onnx")
    assert [s.index for s in spans] == [0, 1, 2]
    assert spans[1].hidden_input == spans[0].output and spans[2].hidden_input == spans[1].output


def test_keep_layers_distills_a_shallower_student_that_keeps_dynamic_axes(encoder, tmp_path):
    target = {
        "name": "2of3",
        "technique": "distill",
        "params": {"keepLayers": [0, 2], "epochs": 4, "learningRate": 0.003},
    }
    data = DataFiles(evaluation=encoder / "eval.npz", train=encoder / "train.npz")
    manifest = compress_model(
        encoder / "model.onnx", target, data, tmp_path / "out", task=Task.EMBEDDING, latency_runs=10
    )
    details = manifest.steps[0].details
    assert details["student"] == {"kind": "transformer layers", "layers": 3, "keptLayers": [0, 2]}
    assert details["loss"][-1] < details["loss"][0]
    student = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert not [n.name for n in student.graph.node if "/layers.1/" in n.name]
    assert manifest.metrics.sizeRatio is not None and manifest.metrics.sizeRatio < 0.9
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    for shape in ((1, 3), (5, 12)):  # other batch sizes and sequence lengths than any seen so far
        assert session.run(None, {"ids": np.ones(shape, np.int64)})[0].shape == (shape[0], 16)


def test_untrained_layer_drop_is_worse_than_the_distilled_student(encoder, tmp_path):
    data = DataFiles(evaluation=encoder / "eval.npz", train=encoder / "train.npz")
    trained = compress_model(
        encoder / "model.onnx", {"name": "t", "technique": "distill", "params": {"keepLayers": [0, 2], "epochs": 6, "learningRate": 0.003}},
        data, tmp_path / "t", task=Task.EMBEDDING, latency_runs=10,
    )  # fmt: skip
    dropped_only = compress_model(
        encoder / "model.onnx", {"name": "d", "technique": "distill", "params": {"keepLayers": [0, 2], "epochs": 1, "learningRate": 1e-9}},
        data, tmp_path / "d", task=Task.EMBEDDING, latency_runs=10,
    )  # fmt: skip
    assert trained.metrics.accuracyDelta is not None and dropped_only.metrics.accuracyDelta is not None
    assert trained.metrics.accuracyDelta < dropped_only.metrics.accuracyDelta


def test_keep_layers_input_errors(encoder, tmp_path):
    data = DataFiles(evaluation=encoder / "eval.npz", train=encoder / "train.npz")
    for keep, message in (([0, 7], "within 0..2"), ([0, 1, 2], "keeps all 3 layers")):
        with pytest.raises(BadInputError, match=message):
            compress_model(
                encoder / "model.onnx", {"name": "x", "technique": "distill", "params": {"keepLayers": keep}},
                data, tmp_path / "x", task=Task.EMBEDDING,
            )  # fmt: skip


def test_unstructured_prune_and_low_rank_fine_tune_write_back_into_the_same_graph(encoder, tmp_path):
    data = DataFiles(evaluation=encoder / "eval.npz", train=encoder / "train.npz")
    pruned = compress_model(
        encoder / "model.onnx", {"name": "p", "technique": "prune", "params": {"amount": 0.5, "fineTuneEpochs": 2}},
        data, tmp_path / "p", task=Task.EMBEDDING, latency_runs=10,
    )  # fmt: skip
    details = pruned.steps[0].details
    assert details["prunedLayerSparsity"] == pytest.approx(0.5, abs=0.01)
    assert 0.3 < details["weightSparsity"] < 0.5  # the embedding table is a weight too, and not pruned
    shapes_before = {n.op_type for n in onnx.load(str(encoder / "model.onnx")).graph.node}
    assert "Shape" in shapes_before
    # same graph: only the Identity nodes that shared equal weights became separate initializers, and
    # intake folded the Constant nodes into initializers
    assert {n.op_type for n in onnx.load(str(tmp_path / "p" / "model.onnx")).graph.node} == shapes_before - {
        "Identity",
        "Constant",
    }
    lowrank = compress_model(
        encoder / "model.onnx",
        {"name": "l", "technique": "low-rank", "params": {"rankRatio": 0.25, "minDim": 16, "fineTuneEpochs": 2}},
        data, tmp_path / "l", task=Task.EMBEDDING, latency_runs=10,
    )  # fmt: skip
    assert lowrank.steps[0].details["factoredLayers"] >= 3


def test_structured_prune_refuses_run_time_shape_arithmetic(encoder, tmp_path):
    with pytest.raises(UnsupportedModelError, match="Shape"):
        build_module(onnx.load(str(encoder / "model.onnx")), "model.onnx", traceable=True)
    module = build_module(onnx.load(str(encoder / "model.onnx")), "model.onnx", traceable=False)
    ids = np.ones((2, 5), np.int64)
    reference = ort.InferenceSession(str(encoder / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(
            module(torch.from_numpy(ids)).numpy(), reference.run(None, {"ids": ids})[0], atol=1e-5
        )

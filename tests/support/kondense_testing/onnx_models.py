"""Tiny real ONNX models (built with onnx.helper) and their manifests, for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kondense.api.artifacts import MANIFEST_FILE, MODEL_FILE, ArtifactRef, Manifest, sha256_file
from kondense.api.techniques import Task


def linear_classifier(
    path: Path, batch: int | str = "batch", features: int = 64, classes: int = 10, seed: int = 0
) -> Path:
    """x[batch, features] @ W + b -> softmax probabilities[batch, classes]."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.normal(size=(features, classes)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.normal(size=(classes,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, classes])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def artifact_dir(directory: Path, **kwargs: object) -> Path:
    """A directory with model.onnx and a manifest.json carrying its real sha256."""
    model = linear_classifier(directory / MODEL_FILE, **kwargs)  # type: ignore[arg-type]
    ref = ArtifactRef(sha256=sha256_file(model), sizeBytes=model.stat().st_size)
    manifest = Manifest(name="test", task=Task.CLASSIFICATION, base=ref, artifact=ref)
    (directory / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
    return directory


def external_data_artifact_dir(directory: Path, **kwargs: object) -> Path:
    """Like ``artifact_dir``, with the weights in an external-data file ``weights.bin`` beside the
    model; the manifest carries ``artifact_digest`` over both files."""
    from kondense.api.artifacts import artifact_digest

    model_path = linear_classifier(directory / MODEL_FILE, **kwargs)  # type: ignore[arg-type]
    model = onnx.load(str(model_path))
    onnx.save_model(
        model, str(model_path), save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    ref = ArtifactRef(
        sha256=artifact_digest(model_path, ["weights.bin"]),
        sizeBytes=model_path.stat().st_size + (directory / "weights.bin").stat().st_size,
        externalData=["weights.bin"],
    )
    manifest = Manifest(name="test", task=Task.CLASSIFICATION, base=ref, artifact=ref)
    (directory / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
    return directory


def manifest_digest(directory: Path) -> str:
    """The ``artifact.sha256`` a directory's manifest records (what an operator would pass along)."""
    return Manifest.model_validate_json((directory / MANIFEST_FILE).read_bytes()).artifact.sha256

"""Build a Triton model repository from a verified kondense artifact (runs in the init container)."""

from __future__ import annotations

import shutil
from pathlib import Path

from kondense.api.artifacts import MANIFEST_FILE, MODEL_FILE, Manifest, sha256_file
from kondense.triton.config import BatchingSpec, TensorSpec, model_config


class RepositoryError(RuntimeError):
    pass


def verified_model(model_dir: Path) -> Path:
    manifest_path = model_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise RepositoryError(f"{manifest_path}: missing; refusing to serve an unverified model")
    manifest = Manifest.model_validate_json(manifest_path.read_text())
    model = model_dir / manifest.artifact.file
    if not model.is_file():
        raise RepositoryError(f"{model}: missing")
    actual = sha256_file(model)
    if actual != manifest.artifact.sha256:
        raise RepositoryError(
            f"{model}: sha256 {actual} does not match the manifest's {manifest.artifact.sha256}"
        )
    return model


def signature(model: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inputs = [TensorSpec(i.name, i.type, list(i.shape)) for i in session.get_inputs()]
    outputs = [TensorSpec(o.name, o.type, list(o.shape)) for o in session.get_outputs()]
    return inputs, outputs


def build_repository(model_dir: Path, repository: Path, name: str, batching: BatchingSpec) -> Path:
    """<repository>/<name>/config.pbtxt and <repository>/<name>/1/model.onnx."""
    model = verified_model(model_dir)
    inputs, outputs = signature(model)
    target = repository / name
    (target / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, target / "1" / MODEL_FILE)
    (target / "config.pbtxt").write_text(model_config(name, inputs, outputs, batching))
    return target

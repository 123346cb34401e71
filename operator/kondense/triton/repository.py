"""Build a Triton model repository from a verified kondense artifact (runs in the init container)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from kondense.api.artifacts import (
    MANIFEST_FILE,
    MODEL_FILE,
    SHA256_HEX,
    ArtifactPathError,
    ManifestError,
    artifact_digest,
    artifact_member,
    read_manifest,
)
from kondense.triton.config import BatchingSpec, TensorSpec, model_config


class RepositoryError(RuntimeError):
    pass


@dataclass(frozen=True)
class VerifiedArtifact:
    model: Path
    external_data: tuple[str, ...]
    """External-data files, relative to the model's directory (already checked to stay inside it)."""
    digest: str


def verified_model(model_dir: Path, expected_sha256: str) -> VerifiedArtifact:
    """The artifact's files, once ``artifact_digest`` equals both the manifest's and ``expected_sha256``."""
    if not SHA256_HEX.match(expected_sha256):
        raise RepositoryError(f"--expected-sha256 {expected_sha256!r} is not 64 lowercase hex digits")
    manifest_path = model_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise RepositoryError(f"{manifest_path} is missing; refusing to serve an unverified model")
    try:
        manifest = read_manifest(manifest_path)
    except ManifestError as exc:
        raise RepositoryError(str(exc)) from None
    try:
        model = artifact_member(model_dir, manifest.artifact.file)
        for name in manifest.artifact.externalData:
            artifact_member(model.parent, name)
    except ArtifactPathError as exc:
        raise RepositoryError(f"{manifest_path}: refusing the artifact: {exc}") from None
    if not model.is_file():
        raise RepositoryError(f"{model} (artifact.file of {manifest_path}) is missing")
    try:
        actual = artifact_digest(model, manifest.artifact.externalData)
    except OSError as exc:
        raise RepositoryError(f"cannot read the artifact's files: {exc}") from None
    if actual != manifest.artifact.sha256:
        raise RepositoryError(
            f"{model}: digest {actual} does not match the manifest's artifact.sha256 {manifest.artifact.sha256}"
        )
    if actual != expected_sha256:
        raise RepositoryError(
            f"{model}: digest {actual} is not the expected {expected_sha256} the operator recorded "
            "(the artifact was replaced after it was built)"
        )
    return VerifiedArtifact(model, tuple(sorted(set(manifest.artifact.externalData))), actual)


def check_model_name(name: str) -> None:
    """Triton's model name is a directory of the repository: one plain path component."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise RepositoryError(f"model name {name!r} must be one path component (no '/', not '.' or '..')")


def signature(model: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for unreadable/invalid graphs
        raise RepositoryError(f"ONNX Runtime cannot load {model}: {exc}") from None
    inputs = [TensorSpec(i.name, i.type, list(i.shape)) for i in session.get_inputs()]
    outputs = [TensorSpec(o.name, o.type, list(o.shape)) for o in session.get_outputs()]
    return inputs, outputs


def build_repository(
    model_dir: Path, repository: Path, name: str, batching: BatchingSpec, expected_sha256: str
) -> Path:
    """<repository>/<name>/config.pbtxt and <repository>/<name>/1/model.onnx (+ its external data)."""
    check_model_name(name)
    artifact = verified_model(model_dir, expected_sha256)
    inputs, outputs = signature(artifact.model)
    config = model_config(name, inputs, outputs, batching)
    target = repository / name
    version = target / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(artifact.model, version / MODEL_FILE)
    for member in artifact.external_data:  # ONNX Runtime finds them relative to the model file
        destination = version / member
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifact.model.parent / member, destination)
    (target / "config.pbtxt").write_text(config)
    return target

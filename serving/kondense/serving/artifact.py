"""Check a model directory before serving it: ``model.onnx`` must match ``manifest.json``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from kondense.api.artifacts import MANIFEST_FILE, MODEL_FILE, Manifest, sha256_file

log = logging.getLogger(__name__)


class ArtifactError(RuntimeError):
    """The model directory cannot be served as it is; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class CheckedArtifact:
    model_path: Path
    sha256: str
    """The sha256 of the file actually served (equal to the manifest's when verified)."""
    manifest: Manifest | None
    verified: bool


def check_artifact(model_dir: str | Path, *, verify: bool = True) -> CheckedArtifact:
    """Read the manifest and hash the model; with ``verify`` a missing manifest or a mismatch is fatal."""
    directory = Path(model_dir)
    if not directory.is_dir():
        raise ArtifactError(f"model directory {directory} does not exist or is not a directory")
    manifest_path = directory / MANIFEST_FILE
    manifest = None
    if manifest_path.is_file():
        try:
            manifest = Manifest.model_validate_json(manifest_path.read_bytes())
        except ValidationError as exc:
            problem = f"{manifest_path} is not a valid manifest: {exc.errors(include_url=False)[0]['msg']}"
            if verify:
                raise ArtifactError(problem) from None
            log.warning("%s (ignored: --no-verify)", problem)
    elif verify:
        raise ArtifactError(
            f"{manifest_path} is missing, so {directory / MODEL_FILE} cannot be verified "
            "(pass --no-verify to serve an unverified model)"
        )

    model_path = directory / (manifest.artifact.file if manifest else MODEL_FILE)
    if directory.resolve() not in model_path.resolve().parents:
        raise ArtifactError(f"{manifest_path}: artifact.file {model_path.name!r} points outside {directory}")
    if not model_path.is_file():
        raise ArtifactError(f"model file {model_path} does not exist")
    actual = sha256_file(model_path)
    if manifest is not None and actual != manifest.artifact.sha256:
        problem = (
            f"{model_path} has sha256 {actual} but {manifest_path} says artifact.sha256 is "
            f"{manifest.artifact.sha256}: the file is not the artifact the manifest describes"
        )
        if verify:
            raise ArtifactError(problem)
        log.warning("%s (serving it anyway: --no-verify)", problem)
        return CheckedArtifact(model_path, actual, manifest, verified=False)
    return CheckedArtifact(model_path, actual, manifest, verified=manifest is not None)

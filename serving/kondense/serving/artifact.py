"""Check a model directory before serving it.

The served files (``model.onnx`` and the external-data files it names) must have the digest
``artifact_digest`` that both ``manifest.json`` and the operator (``--expected-sha256``, the digest it
recorded when the artifact was built) state. The manifest alone is not enough: whoever can write the
model can write the manifest beside it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from kondense.api.artifacts import (
    MANIFEST_FILE,
    MODEL_FILE,
    SHA256_HEX,
    ArtifactPathError,
    Manifest,
    ManifestError,
    artifact_digest,
    artifact_member,
    read_manifest,
)

log = logging.getLogger(__name__)


class ArtifactError(RuntimeError):
    """The model directory cannot be served as it is; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class CheckedArtifact:
    model_path: Path
    sha256: str
    """``artifact_digest`` of the files actually served (equal to the expected one when verified)."""
    manifest: Manifest | None
    verified: bool


def check_artifact(
    model_dir: str | Path, *, verify: bool = True, expected_sha256: str | None = None
) -> CheckedArtifact:
    """Read the manifest and digest the artifact.

    With ``verify`` (the default) the manifest must exist, and the digest must equal both its
    ``artifact.sha256`` and ``expected_sha256``, which is then required. Without it (``--no-verify``,
    local use) mismatches are logged. Files outside the directory are refused either way.
    """
    directory = Path(model_dir)
    if verify and expected_sha256 is None:
        raise ArtifactError(
            "--expected-sha256 is required: pass the digest recorded when the artifact was built "
            "(or --no-verify to serve an unverified model locally)"
        )
    if expected_sha256 is not None and not SHA256_HEX.match(expected_sha256):
        raise ArtifactError(f"--expected-sha256 {expected_sha256!r} is not 64 lowercase hex digits")
    if not directory.is_dir():
        raise ArtifactError(f"model directory {directory} does not exist or is not a directory")
    manifest_path = directory / MANIFEST_FILE
    manifest = None
    if manifest_path.is_file():
        try:
            manifest = read_manifest(manifest_path)
        except ManifestError as exc:
            problem = str(exc)
            if verify:
                raise ArtifactError(problem) from None
            log.warning("%s (ignored: --no-verify)", problem)
    elif verify:
        raise ArtifactError(
            f"{manifest_path} is missing, so {directory / MODEL_FILE} cannot be verified "
            "(pass --no-verify to serve an unverified model)"
        )

    external = list(manifest.artifact.externalData) if manifest else []
    try:
        model_path = artifact_member(directory, manifest.artifact.file if manifest else MODEL_FILE)
        for name in external:
            artifact_member(model_path.parent, name)
    except ArtifactPathError as exc:
        raise ArtifactError(f"{manifest_path}: {exc}") from None
    if not model_path.is_file():
        raise ArtifactError(f"model file {model_path} does not exist")
    try:
        actual = artifact_digest(model_path, external)
    except OSError as exc:
        raise ArtifactError(f"cannot read the artifact's files: {exc}") from None

    problems = []
    if manifest is not None and actual != manifest.artifact.sha256:
        problems.append(
            f"{model_path} (with its external data) has digest {actual} but {manifest_path} says "
            f"artifact.sha256 is {manifest.artifact.sha256}: the files are not the artifact the manifest describes"
        )
    if expected_sha256 is not None and actual != expected_sha256:
        problems.append(
            f"{model_path} (with its external data) has digest {actual}, not the expected {expected_sha256} "
            "recorded when the artifact was built: it was replaced since"
        )
    if problems:
        if verify:
            raise ArtifactError(problems[0])
        for problem in problems:
            log.warning("%s (serving it anyway: --no-verify)", problem)
        return CheckedArtifact(model_path, actual, manifest, verified=False)
    return CheckedArtifact(
        model_path, actual, manifest, verified=manifest is not None and expected_sha256 is not None
    )

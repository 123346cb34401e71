"""Contracts between the compression Job, the model server and the operator.

* ``VariantMetrics``: what evaluation measured (also copied into ``status.variants[].metrics``).
* ``Manifest``: ``manifest.json`` written next to every ``model.onnx``; whoever loads the model checks
  ``artifact.sha256``.
* ``JobResult``: the compact JSON (< 4 KiB) a compression Job writes to its termination log; the
  operator reads it from the pod status.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field, model_validator

from kondense.api.techniques import Task, Technique

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
TERMINATION_LOG_LIMIT = 4096
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")  # an artifact digest as the operator records it


class _Open(BaseModel):
    # Written by our own code and read back by newer/older versions: tolerate extra fields.
    model_config = ConfigDict(extra="allow")


class VariantMetrics(_Open):
    """Offline evaluation of a variant against its base model, measured in one interleaved run.

    ``sizeRatio`` is variant bytes / base bytes (0.25 = four times smaller). ``accuracyDelta`` is the
    loss against the base model: top-1 accuracy difference with labels, else 1 - agreement
    (classification); 1 - mean cosine (embedding); relative MAE (regression). Lower is better.
    Footprint, base and variant measured alike: peak memory (resident set growth while loading and
    running at batch 1), session load time (cold start) and process CPU seconds per 1,000 batch-1
    inferences (the basis of cost per inference).
    """

    sizeRatio: float | None = Field(None, ge=0)
    p50Ms: float | None = Field(None, ge=0)
    p99Ms: float | None = Field(None, ge=0)
    baseP50Ms: float | None = Field(None, ge=0)
    baseP99Ms: float | None = Field(None, ge=0)
    accuracyDelta: float | None = None
    peakMemoryMB: float | None = Field(None, ge=0, description="Peak resident memory of the variant (MiB).")
    basePeakMemoryMB: float | None = Field(None, ge=0, description="Peak resident memory of the base (MiB).")
    loadMs: float | None = Field(None, ge=0, description="Variant session load time, cold start (ms).")
    baseLoadMs: float | None = Field(None, ge=0, description="Base session load time, cold start (ms).")
    cpuSecondsPer1k: float | None = Field(
        None, ge=0, description="Variant CPU seconds per 1,000 batch-1 inferences."
    )
    baseCpuSecondsPer1k: float | None = Field(
        None, ge=0, description="Base CPU seconds per 1,000 batch-1 inferences."
    )


class ArtifactRef(_Open):
    uri: str | None = None
    file: str = MODEL_FILE
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="artifact_digest(): model file plus its external data; what every consumer pins.",
    )
    sizeBytes: int = Field(ge=0)
    externalData: list[str] = Field(
        default_factory=list, description="External-data files the model references, relative to it."
    )


class ManifestStep(_Open):
    technique: Technique
    params: dict[str, Any] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict, description="What the pass did (e.g. sparsity).")


class Trial(_Open):
    """One configuration tried by accuracy-aware tuning."""

    config: dict[str, Any]
    accuracyDelta: float | None = None
    sizeRatio: float | None = None
    p50Ms: float | None = None
    withinBudget: bool = False
    message: str | None = None
    evalSamples: int | None = None  # sensitivity probes are measured on a subset


class Gate(_Open):
    """``passed`` is what the Job acts on (true without a budget: nothing to fail); ``verdict`` is what
    to show: ``pass`` only when a budget was given and met, ``no budget`` when none was given."""

    maxAccuracyDelta: float | None = None
    passed: bool

    @model_validator(mode="before")
    @classmethod
    def _drop_verdict(cls, data: Any) -> Any:
        # ``verdict`` is derived; a stored one (read back from a manifest) must not become an extra.
        if isinstance(data, dict) and "verdict" in data:
            data = {k: v for k, v in data.items() if k != "verdict"}
        return data

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented pattern
    @property
    def verdict(self) -> Literal["pass", "FAIL", "no budget"]:
        if self.maxAccuracyDelta is None:
            return "no budget"
        return "pass" if self.passed else "FAIL"


class Manifest(_Open):
    schemaVersion: Literal[1] = 1
    name: str
    task: Task
    base: ArtifactRef
    artifact: ArtifactRef
    steps: list[ManifestStep] = Field(default_factory=list)
    tools: dict[str, str] = Field(default_factory=dict, description="Versions of the tools used.")
    metrics: VariantMetrics = Field(default_factory=VariantMetrics)
    trials: list[Trial] = Field(default_factory=list)
    gate: Gate | None = None
    createdAt: str | None = None


class JobResult(_Open):
    """Termination message of a compression Job (kept under TERMINATION_LOG_LIMIT bytes)."""

    name: str
    ok: bool
    reason: Literal["Succeeded", "BudgetNotMet", "BadInput", "Error"]
    message: str | None = None
    artifact: ArtifactRef | None = None
    metrics: VariantMetrics | None = None
    technique: str | None = None
    trials: int = 0
    hardware: str | None = Field(
        None,
        max_length=160,
        description="Where the variant was evaluated: CPU, int8 kernel ISA, ORT version.",
    )


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ManifestError(ValueError):
    """A manifest that does not validate (the message names the file and the first bad field)."""


def read_manifest(path: Path) -> Manifest:
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "body"
        raise ManifestError(f"{path} is not a valid manifest: {where}: {error['msg']}") from None


class ArtifactPathError(ValueError):
    """An artifact names a file outside its own directory."""


def artifact_member(directory: Path, relative: str) -> Path:
    """``directory/relative``, refusing absolute paths, ``..`` and symlinks that leave ``directory``."""
    if not relative or Path(relative).is_absolute():
        raise ArtifactPathError(f"{relative!r} must be a path relative to the artifact directory")
    root = directory.resolve()
    path = (root / relative).resolve()
    if path != root and root not in path.parents:
        raise ArtifactPathError(f"{relative!r} points outside the artifact directory {directory}")
    return path


def artifact_digest(model_path: str | Path, external_data: list[str] | tuple[str, ...] = ()) -> str:
    """The one digest of an artifact that the operator records and every consumer pins.

    Without external data it is the model file's sha256 (so existing digests keep their meaning).
    With external data it is the sha256 of the lines ``<sha256>  <name>``: the model file first, then
    each external-data file in sorted order, so no file of the artifact can change unnoticed.
    """
    model_path = Path(model_path)
    model_digest = sha256_file(model_path)
    if not external_data:
        return model_digest
    digest = hashlib.sha256(f"{model_digest}  {model_path.name}\n".encode())
    for name in sorted(set(external_data)):
        member = artifact_member(model_path.parent, name)
        digest.update(f"{sha256_file(member)}  {name}\n".encode())
    return digest.hexdigest()

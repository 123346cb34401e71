"""The baseline "variant": the base model itself, copied next to the variants with its own manifest.

The operator's stable track serves this artifact until a variant is promoted, so the server can verify
its sha256 like any other; its evaluation (p50/p99 at batch 1 with the same settings as the variants)
is the reference row of the results table.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from kondense.api.artifacts import MANIFEST_FILE, MODEL_FILE, ArtifactRef, Manifest
from kondense.api.techniques import Task
from kondense.compression.data import load_for_model
from kondense.compression.evaluation import Reference, evaluate_variant
from kondense.compression.integrity import (
    copy_with_external_data,
    digest_of,
    external_data_files,
    model_bytes,
)
from kondense.compression.model_files import load_model, open_session, signature_of
from kondense.compression.pipeline import install_output, tool_versions

BASELINE_NAME = "base"


def prepare_baseline(
    model_path: str | Path,
    evaluation_path: str | Path,
    output_dir: str | Path,
    *,
    task: Task | str = Task.CLASSIFICATION,
    model_uri: str | None = None,
    output_uri: str | None = None,
    threads: int = 1,
    latency_runs: int = 200,
) -> Manifest:
    """Check the base model runs on the evaluation data, copy it to ``output_dir`` with a manifest."""
    model_path, output_dir, task = Path(model_path), Path(output_dir), Task(task)
    external = external_data_files(model_path)
    base_digest = digest_of(model_path, external, str(model_path))
    signature = signature_of(load_model(model_path))
    open_session(model_path, threads=threads)  # fail early if ORT cannot run it
    evaluation = load_for_model(evaluation_path, signature)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    workspace = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        final = workspace / MODEL_FILE
        copy_with_external_data(model_path, external, final)  # the artifact is all of its files
        reference = Reference.compute(model_path, evaluation, task, threads=threads)
        metrics, details = evaluate_variant(reference, final, latency_runs=latency_runs, threads=threads)
        ref = ArtifactRef(
            uri=model_uri or model_path.resolve().as_uri(),
            sha256=base_digest,
            sizeBytes=model_bytes(model_path),
            externalData=external,
        )
        artifact = ArtifactRef(
            uri=output_uri,
            sha256=digest_of(final, external, str(final)),
            sizeBytes=model_bytes(final),
            externalData=external,
        )
        manifest = Manifest(
            name=BASELINE_NAME,
            task=task,
            base=ref,
            artifact=artifact,
            tools=tool_versions(),
            metrics=metrics,
            createdAt=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        manifest.evaluation = details  # type: ignore[attr-defined]  # extra field, as for variants
        (workspace / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2, exclude_none=True) + "\n")
        install_output(workspace, output_dir)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    return manifest

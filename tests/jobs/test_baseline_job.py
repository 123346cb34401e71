"""`kondense-compress --baseline`: the artifact the stable track serves before any variant."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from kondense.api.artifacts import JobResult, Manifest, sha256_file
from kondense_testing.onnx_models import linear_classifier


def compress(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kondense.compression.job", *args], capture_output=True, text=True, timeout=300
    )


def test_baseline_copies_checksums_and_evaluates(tmp_path: Path) -> None:
    model = linear_classifier(tmp_path / "in" / "model.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "in" / "eval.npz", x=rng.normal(size=(40, 64)).astype(np.float32),
             labels=rng.integers(0, 10, size=40))  # fmt: skip
    log = tmp_path / "termination-log"
    result = compress(
        "--baseline", "--model", model.as_uri(), "--eval", (tmp_path / "in" / "eval.npz").as_uri(),
        "--output", str(tmp_path / "out" / "base"), "--termination-log", str(log), "--latency-runs", "20",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    job = JobResult.model_validate_json(log.read_text())
    assert job.ok and job.name == "base" and job.artifact is not None and job.metrics is not None
    assert job.artifact.sha256 == sha256_file(model) == sha256_file(tmp_path / "out" / "base" / "model.onnx")
    assert job.metrics.sizeRatio == 1.0 and job.metrics.accuracyDelta == 0.0
    assert job.metrics.p50Ms is not None and job.metrics.p50Ms > 0
    manifest = Manifest.model_validate_json((tmp_path / "out" / "base" / "manifest.json").read_text())
    assert manifest.artifact.sha256 == job.artifact.sha256 and manifest.steps == []
    assert len(log.read_bytes()) < 4096


def test_baseline_refuses_data_that_does_not_fit_the_model(tmp_path: Path) -> None:
    model = linear_classifier(tmp_path / "model.onnx")
    np.savez(tmp_path / "eval.npz", wrong_name=np.zeros((4, 64), np.float32))
    log = tmp_path / "log"
    result = compress("--baseline", "--model", model.as_uri(), "--eval", (tmp_path / "eval.npz").as_uri(),
                      "--output", str(tmp_path / "out"), "--termination-log", str(log))  # fmt: skip
    assert result.returncode == 2
    message = json.loads(log.read_text())["message"]
    assert "eval.npz" in message
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_target_and_baseline_are_exclusive(tmp_path: Path) -> None:
    result = compress("--baseline", "--target", '{"name": "x", "technique": "fp16"}', "--model", "file:///m",
                      "--eval", "file:///e", "--output", str(tmp_path), "--termination-log", str(tmp_path / "l"))  # fmt: skip
    assert result.returncode == 2 and "either --target or --baseline" in result.stderr

"""`kondense-compress --model-sha256`: the base model pin, external data and fresh output directories.

Real Jobs (the console entrypoint in a subprocess) on real ONNX models, one with external data.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from kondense.api.artifacts import JobResult, Manifest, artifact_digest, sha256_file
from kondense_testing.onnx_models import linear_classifier

FP16 = json.dumps({"name": "half", "technique": "fp16"})


def compress(*args: str) -> tuple[int, JobResult, str]:
    log = Path(args[args.index("--output") + 1]).parent / f"log-{abs(hash(args))}"
    done = subprocess.run(
        [sys.executable, "-m", "kondense.compression.job", *args, "--termination-log", str(log),
         "--latency-runs", "10"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    return done.returncode, JobResult.model_validate_json(log.read_text()), done.stderr


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    model = linear_classifier(tmp_path / "in" / "model.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "in" / "eval.npz", x=rng.normal(size=(32, 64)).astype(np.float32),
             labels=rng.integers(0, 10, size=32))  # fmt: skip
    return model, tmp_path / "in" / "eval.npz"


@pytest.fixture
def external_model(tmp_path: Path) -> Path:
    """The same classifier with its weights in weights.bin beside model.onnx."""
    plain = linear_classifier(tmp_path / "plain" / "model.onnx")
    model = onnx.load(str(plain))
    target = tmp_path / "ext" / "model.onnx"
    target.parent.mkdir()
    onnx.save(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)  # fmt: skip
    assert (target.parent / "weights.bin").stat().st_size > 2000
    return target


def args_for(model: Path, eval_npz: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", model.as_uri(), "--eval", eval_npz.as_uri(), "--output", str(out), *extra]


@pytest.mark.parametrize("mode", [["--baseline"], ["--target", FP16]], ids=["baseline", "target"])
def test_a_base_model_that_differs_from_the_pin_is_refused(inputs, tmp_path, mode) -> None:
    model, eval_npz = inputs
    wrong = "0" * 64
    out = tmp_path / "out"
    code, result, stderr = compress(*mode, *args_for(model, eval_npz, out, "--model-sha256", wrong))
    assert (code, result.ok, result.reason) == (2, False, "BadInput")
    message = result.message or ""
    assert f"has sha256 {sha256_file(model)}" in message and f"pins {wrong}" in message
    assert model.as_uri() in message and "refusing a base model that differs" in message
    assert not out.exists()
    # the right pin passes
    code, result, stderr = compress(
        *mode, *args_for(model, eval_npz, out, "--model-sha256", sha256_file(model))
    )
    assert code == 0 and result.ok, stderr


def test_the_pin_is_checked_before_the_model_is_read(inputs, tmp_path) -> None:
    """A file that is not the pinned model is refused for that, not parsed as ONNX."""
    _, eval_npz = inputs
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"\x08\x07 not a protobuf at all" * 10)
    code, result, _ = compress(
        "--baseline", *args_for(bogus, eval_npz, tmp_path / "o", "--model-sha256", "a" * 64)
    )
    assert code == 2 and "refusing a base model that differs" in (result.message or "")
    assert "ONNX" not in (result.message or "")


def test_a_malformed_pin_is_bad_input(inputs, tmp_path) -> None:
    model, eval_npz = inputs
    code, result, _ = compress(
        "--baseline", *args_for(model, eval_npz, tmp_path / "o", "--model-sha256", "ABC")
    )
    assert code == 2 and "--model-sha256: expected 64 lower-case hex digits" in (result.message or "")


def test_external_data_is_pinned_copied_and_listed(external_model, inputs, tmp_path) -> None:
    _, eval_npz = inputs
    digest = artifact_digest(external_model, ["weights.bin"])
    assert digest != sha256_file(external_model)
    out = tmp_path / "base"
    code, result, stderr = compress(
        "--baseline", *args_for(external_model, eval_npz, out, "--model-sha256", digest)
    )
    assert code == 0, stderr
    assert (out / "weights.bin").read_bytes() == (external_model.parent / "weights.bin").read_bytes()
    manifest = Manifest.model_validate_json((out / "manifest.json").read_text())
    assert manifest.artifact.externalData == ["weights.bin"] == manifest.base.externalData
    assert manifest.artifact.sha256 == artifact_digest(out / "model.onnx", ["weights.bin"]) == digest
    assert result.artifact is not None and result.artifact.sha256 == digest
    assert manifest.base.sha256 == digest

    # a variant of it records the base's digest; its own artifact needs no external data
    variant = tmp_path / "half"
    code, result, stderr = compress(
        "--target", FP16, *args_for(external_model, eval_npz, variant, "--model-sha256", digest)
    )
    assert code == 0, stderr
    manifest = Manifest.model_validate_json((variant / "manifest.json").read_text())
    assert manifest.base.sha256 == digest and manifest.base.externalData == ["weights.bin"]
    assert manifest.artifact.sha256 == artifact_digest(variant / "model.onnx", manifest.artifact.externalData)
    # sizes count the external weights: the base is model.onnx + weights.bin, fp16 is well under it
    on_disk = external_model.stat().st_size + (external_model.parent / "weights.bin").stat().st_size
    assert manifest.base.sizeBytes == on_disk
    assert manifest.metrics.sizeRatio is not None and manifest.metrics.sizeRatio < 0.75

    # changing only the external weights is caught by the pin
    weights = external_model.parent / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))
    code, result, _ = compress(
        "--baseline", *args_for(external_model, eval_npz, tmp_path / "again", "--model-sha256", digest)
    )
    assert code == 2 and "(model and 1 external-data file(s))" in (result.message or "")


def test_a_missing_external_data_file_is_a_clear_error(external_model, inputs, tmp_path) -> None:
    _, eval_npz = inputs
    (external_model.parent / "weights.bin").unlink()
    code, result, _ = compress(
        "--baseline", *args_for(external_model, eval_npz, tmp_path / "o", "--model-sha256", "b" * 64)
    )
    assert code == 2 and "external-data file 'weights.bin' of the model is missing" in (result.message or "")


def test_external_data_outside_the_model_directory_is_refused(external_model, inputs, tmp_path) -> None:
    _, eval_npz = inputs
    model = onnx.load(str(external_model), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    onnx.save(model, str(external_model))
    code, result, _ = compress("--baseline", *args_for(external_model, eval_npz, tmp_path / "o"))
    assert code == 2 and "points outside the artifact directory" in (result.message or "")


@pytest.mark.parametrize("mode", [["--baseline"], ["--target", FP16]], ids=["baseline", "target"])
def test_a_job_never_writes_into_a_non_empty_output(inputs, tmp_path, mode) -> None:
    model, eval_npz = inputs
    out = tmp_path / "served"
    code, result, stderr = compress(*mode, *args_for(model, eval_npz, out))
    assert code == 0, stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, result, _ = compress(*mode, *args_for(model, eval_npz, out))
    assert (code, result.reason) == (2, "BadInput")
    assert "is not empty; a compression Job never writes into a non-empty artifact directory" in (
        result.message or ""
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    # an empty directory (made by whoever prepared the run) is fine
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    code, result, stderr = compress(*mode, *args_for(model, eval_npz, fresh))
    assert code == 0, stderr


def test_report_verifies_external_data(external_model, inputs, tmp_path) -> None:
    _, eval_npz = inputs
    out = tmp_path / "base"
    code, _, stderr = compress("--baseline", *args_for(external_model, eval_npz, out))
    assert code == 0, stderr
    kondense = [sys.executable, "-m", "kondense.cli", "report", str(out)]
    done = subprocess.run(kondense, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    data = bytearray((out / "weights.bin").read_bytes())
    data[0] ^= 0xFF
    (out / "weights.bin").write_bytes(bytes(data))
    done = subprocess.run(kondense, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "sha256 does not match manifest.json" in done.stderr and "1 external-data file(s)" in done.stderr

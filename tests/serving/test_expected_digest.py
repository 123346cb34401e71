"""The server serves only the artifact the operator recorded: ``artifact_digest`` of the model and its
external data must equal both the manifest's ``artifact.sha256`` and ``--expected-sha256`` (issue 11,
points 3 and 11)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from kondense.api.artifacts import MANIFEST_FILE
from kondense_testing.onnx_models import artifact_dir, external_data_artifact_dir, manifest_digest

from .conftest import KONDENSE, free_port, running_server


def serve_and_fail(model_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [*KONDENSE, "serve", "--model", str(model_dir), "--name", "m", "--host", "127.0.0.1"]
    command += ["--port", str(free_port()), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a server that refused to start."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].endswith("refusing to serve")
    return errors[0]


def test_a_replaced_artifact_with_a_matching_manifest_is_refused(tmp_path: Path) -> None:
    recorded = manifest_digest(artifact_dir(tmp_path / "original"))
    replaced = artifact_dir(tmp_path / "replaced", seed=9)  # its manifest agrees with it
    line = refusal(serve_and_fail(replaced, "--expected-sha256", recorded))
    assert f"not the expected {recorded}" in line


def test_the_expected_digest_is_required_unless_no_verify(tmp_path: Path) -> None:
    model_dir = artifact_dir(tmp_path / "model")
    line = refusal(serve_and_fail(model_dir))
    assert "--expected-sha256 is required" in line and "--no-verify" in line
    assert "not 64 lowercase hex digits" in refusal(serve_and_fail(model_dir, "--expected-sha256", "XYZ"))
    with running_server(model_dir, "m", "--no-verify") as server:
        parameters = httpx.get(f"{server.url}/v2/models/m").json()["parameters"]
        assert parameters["verified"] is False and parameters["sha256"] == manifest_digest(model_dir)


def test_external_data_is_covered_by_the_digest(tmp_path: Path) -> None:
    model_dir = external_data_artifact_dir(tmp_path / "model")
    digest = manifest_digest(model_dir)
    body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0.25] * 64}]}
    with running_server(model_dir, "m", "--expected-sha256", digest) as server:
        answer = httpx.post(server.infer_url, json=body, timeout=10)
        assert answer.status_code == 200
        assert np.isclose(sum(answer.json()["outputs"][0]["data"]), 1.0, atol=1e-5)
        assert httpx.get(f"{server.url}/v2/models/m").json()["parameters"]["verified"] is True

    tampered = tmp_path / "tampered"
    shutil.copytree(model_dir, tampered)
    weights = bytearray((tampered / "weights.bin").read_bytes())
    weights[-1] ^= 0x01
    (tampered / "weights.bin").write_bytes(bytes(weights))
    line = refusal(serve_and_fail(tampered, "--expected-sha256", digest))
    assert "says artifact.sha256 is" in line


@pytest.mark.parametrize(
    ("field", "value"),
    [("file", "/etc/hostname"), ("file", "../model/model.onnx"), ("externalData", ["../../etc/hostname"])],
)
def test_files_outside_the_artifact_are_refused(tmp_path: Path, field: str, value: object) -> None:
    model_dir = external_data_artifact_dir(tmp_path / "model")
    digest = manifest_digest(model_dir)
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    manifest = json.loads((other / MANIFEST_FILE).read_text())
    manifest["artifact"][field] = value
    (other / MANIFEST_FILE).write_text(json.dumps(manifest))
    for flags in (["--expected-sha256", digest], ["--no-verify"]):  # refused even with --no-verify
        line = refusal(serve_and_fail(other, *flags))
        assert "artifact directory" in line

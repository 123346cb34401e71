"""The README's kind path on a real cluster: kind-up, images, deploy, apply, wait for ``Promoted``.

Runs only with ``KONDENSE_E2E_KIND=1`` and ``kind``, ``docker`` and a reachable cluster (or one this
test may create with ``make kind-up``); otherwise it is skipped with the reason. It drives the same
Makefile targets a person runs (docs/kind.md), then watches the CompressedModel with kubectl.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = os.environ.get("DEMO_NAMESPACE", "default")
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]


def _skip_reason() -> str | None:
    if os.environ.get("KONDENSE_E2E_KIND") != "1":
        return "set KONDENSE_E2E_KIND=1 to run the kind end-to-end test"
    for tool in ("kind", "docker", "kubectl", "make"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "the docker daemon is not reachable"
    return None


def make(*targets: str) -> None:
    result = subprocess.run(["make", *targets], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"make {' '.join(targets)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )


def kubectl(*args: str) -> str:
    result = subprocess.run(["kubectl", *args], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_kind_readme_path_ends_promoted() -> None:
    make("kind-up")
    if subprocess.run(["kubectl", "cluster-info"], capture_output=True).returncode != 0:
        pytest.skip("kind created the cluster but kubectl cannot reach it")
    make("images", "kind-load", "kind-prometheus", "deploy", "kind-models")
    kubectl("apply", "-n", NAMESPACE, "-f", "examples/digits/compressedmodel.yaml")
    deadline = time.monotonic() + 1800
    status: dict[str, object] = {}
    while time.monotonic() < deadline:
        status = (
            json.loads(kubectl("get", "cmodel", "digits", "-n", NAMESPACE, "-o", "json")).get("status") or {}
        )
        if status.get("phase") in ("Promoted", "RolledBack", "Failed"):
            break
        time.sleep(5)
    assert status.get("phase") == "Promoted", json.dumps(status, indent=1)
    stable = json.loads(kubectl("get", "deployment", "digits-stable", "-n", NAMESPACE, "-o", "json"))
    sha = stable["spec"]["template"]["metadata"]["annotations"]["kondense.dev/artifact-sha256"]
    promoted = next(v for v in status["variants"] if v["phase"] == "Promoted")  # type: ignore[attr-defined]
    assert sha == promoted["artifact"]["sha256"]

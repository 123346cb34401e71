"""Driving ``kondense up`` as a user does: the real ``kondense``, ``kubectl`` and ``helm`` in a shell's shoes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from kondense.localcluster.scenarios import quick_profile
from kondense_testing.paths import EXAMPLES
from kondense_testing.tools import find_tool

KONDENSE = str(Path(sys.executable).parent / "kondense")


def kubectl() -> str:
    return find_tool("kubectl")


def helm() -> str:
    return find_tool("helm")


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """stdout of a command that must succeed (its output in the failure otherwise)."""
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def kubeconfig_env(up_output: str) -> dict[str, str]:
    """The environment after the `export KUBECONFIG=...` line `kondense up` printed (exactly one)."""
    exports = [line for line in up_output.splitlines() if line.startswith("export KUBECONFIG=")]
    assert len(exports) == 1, up_output
    return {**os.environ, "KUBECONFIG": exports[0].removeprefix("export KUBECONFIG=")}


def wait_for_phase(env: dict[str, str], name: str, phases: set[str], timeout: float) -> str:
    """Poll `kubectl get cmodel NAME -o jsonpath={.status.phase}` until one of ``phases`` (bounded)."""
    deadline, phase = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        phase = run([kubectl(), "get", "cmodel", name, "-o", "jsonpath={.status.phase}"], env)
        if phase in phases:
            return phase
        time.sleep(3)
    raise AssertionError(f"{name} still {phase!r} after {timeout:.0f}s")


def quick_digits(directory: Path) -> Path:
    """examples/digits/compressedmodel.yaml with the demo tests' quick profile (two targets, two steps),
    its analysis made patient for a loaded machine: 30 s windows, up to three failed checks (a check
    with no data yet counts as failed; these tests are about the cluster, not the gates)."""
    body = yaml.safe_load((EXAMPLES / "digits" / "compressedmodel.yaml").read_text())
    quick_profile(body)
    rollout = body["spec"]["rollout"]
    rollout.update(interval="15s", failureLimit=3)
    rollout["analysis"].update(window="30s")
    path = directory / "digits.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def recorded_processes(workdir: Path) -> list[dict[str, object]]:
    """The daemon and every process group it recorded (``up.pid``, ``children.json``)."""
    children = json.loads((workdir / "children.json").read_text())
    daemon = json.loads((workdir / "up.pid").read_text())
    return [daemon, *children]

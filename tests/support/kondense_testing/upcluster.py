"""Driving ``kondense up`` as a user does: the real ``kondense``, ``kubectl`` and ``helm`` in a shell's shoes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


class UpCluster:
    """One ``kondense up`` (the real command, in the background) in a work directory of its own.

    ``up_output`` is what the first ``kondense up`` printed; ``env`` is the shell's environment after the
    ``export KUBECONFIG=...`` line it printed (after :meth:`start`).
    """

    def __init__(self, workdir: Path, examples_cache: Path) -> None:
        self.workdir = workdir
        self.up_argv = [KONDENSE, "up", "--workdir", str(workdir), "--examples-cache", str(examples_cache)]
        self.up_output = ""
        self.env: dict[str, str] = {}

    def start(self) -> None:
        """The first ``kondense up``."""
        self.up_output = run(self.up_argv)
        self.env = kubeconfig_env(self.up_output)

    @property
    def kubeconfig(self) -> Path:
        return Path(self.env["KUBECONFIG"])

    @property
    def prometheus(self) -> str:
        """Prometheus' URL, as ``kondense up`` printed it."""
        lines = [line for line in self.up_output.splitlines() if line.startswith("prometheus: ")]
        assert len(lines) == 1, self.up_output
        return lines[0].removeprefix("prometheus: ").strip()

    def kubectl(self, *args: str) -> str:
        return run([kubectl(), *args], self.env)

    def compressed_model(self, name: str) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.kubectl("get", "cmodel", name, "-o", "json"))
        return body

    def event_reasons(self) -> list[str]:
        events = json.loads(self.kubectl("get", "events", "-o", "json"))["items"]
        return [str(e.get("reason")) for e in events]

    def promote_quick_digits(self, directory: Path, timeout: float = 900) -> None:
        """``kubectl apply`` the quick digits example; returns once it is Promoted (no promotion under
        way) and the Promoted Event is posted (kopf posts Events from a queue after the status write)."""
        self.kubectl("apply", "-f", str(quick_digits(directory)))
        phase = wait_for_phase(self.env, "digits", {"Promoted", "RolledBack", "Failed"}, timeout)
        assert phase == "Promoted", f"digits {phase}; operator log tail:\n{self.operator_log_tail()}"
        deadline = time.monotonic() + 120
        while not self._settled("digits"):
            assert time.monotonic() < deadline, self.kubectl("describe", "cmodel", "digits")
            time.sleep(1)

    def _settled(self, name: str) -> bool:
        status = self.compressed_model(name).get("status") or {}
        promoting = (status.get("canary") or {}).get("promoting")
        return status.get("phase") == "Promoted" and not promoting and "Promoted" in self.event_reasons()

    def operator_log_tail(self) -> str:
        log = self.workdir / "logs" / "operator.log"
        return log.read_text(errors="replace")[-3000:] if log.is_file() else f"(no {log})"

    def down(self) -> None:
        """``kondense down`` (never fails: for cleanup; tests that check it run it themselves)."""
        subprocess.run([KONDENSE, "down", "--workdir", str(self.workdir)], capture_output=True, timeout=180)

"""The Helm chart installed into ``kondense up --no-operator`` with the real ``helm`` (v4) and ``kubectl``.

The operator then runs from the chart's own Deployment: the chart's ServiceAccount, RBAC, env and args,
the image ``kondense/operator`` run by the process kubelet as the local ``kondense`` command. It
reconciles the digits example (quick profile, as in tests/localcluster/test_up_lifecycle.py) to
Promoted; ``helm uninstall`` removes the operator pod; ``kondense down`` leaves no process.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from kondense.localcluster.up import alive
from kondense_testing.paths import REPO
from kondense_testing.upcluster import (
    KONDENSE,
    helm,
    kubeconfig_env,
    kubectl,
    quick_digits,
    recorded_processes,
    run,
    wait_for_phase,
)

pytestmark = [pytest.mark.localcluster, pytest.mark.timeout(1500)]


def operator_pod_phase(env: dict[str, str]) -> list[tuple[str, bool]]:
    pods = json.loads(run([kubectl(), "-n", "kondense", "get", "pods", "-o", "json"], env))["items"]
    return [
        (
            pod["status"].get("phase", ""),
            any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])),
        )
        for pod in pods
    ]


def test_helm_install_runs_the_charts_operator_which_promotes(tmp_path: Path, digits_example: Path) -> None:
    KUBECTL, HELM = kubectl(), helm()
    workdir = tmp_path / "up"
    examples = digits_example  # built once per session (tests/conftest.py); `up` copies it to the claim
    try:
        out = run(
            [KONDENSE, "up", "--no-operator", "--workdir", str(workdir), "--examples-cache", str(examples)]
        )
        env = kubeconfig_env(out)
        helm_hint = [line for line in out.splitlines() if line.startswith("helm: ")]
        assert helm_hint and f"operator.pvcRoot={workdir.resolve() / 'pvc'}" in helm_hint[0]

        install = [HELM, "install", "kondense", str(REPO / "charts" / "kondense"), "-n", "kondense",
                   "--create-namespace", "-f", str(REPO / "deploy" / "local" / "values.yaml"),
                   "--set", f"operator.pvcRoot={workdir.resolve() / 'pvc'}", "--wait", "--timeout", "5m"]  # fmt: skip
        run(install, env)
        assert operator_pod_phase(env) == [("Running", True)]
        # what helm created, as the chart declares it
        assert run([KUBECTL, "-n", "kondense", "get", "serviceaccount", "kondense", "-o", "name"], env)
        assert run([KUBECTL, "-n", "default", "get", "rolebinding", "kondense", "-o", "name"], env)
        releases = run([KUBECTL, "-n", "kondense", "get", "secrets", "-l", "owner=helm", "-o", "name"], env)
        assert "sh.helm.release.v1.kondense.v1" in releases

        run([KUBECTL, "apply", "-f", str(quick_digits(tmp_path))], env)
        assert wait_for_phase(env, "digits", {"Promoted", "RolledBack", "Failed"}, 900) == "Promoted"

        run([HELM, "uninstall", "kondense", "-n", "kondense", "--wait"], env)
        deadline = time.monotonic() + 60
        while operator_pod_phase(env) and time.monotonic() < deadline:
            time.sleep(1)
        assert operator_pod_phase(env) == []
        processes = recorded_processes(workdir)
    finally:
        subprocess.run([KONDENSE, "down", "--workdir", str(workdir)], capture_output=True, timeout=180)
    assert [p for p in processes if alive(p)] == []

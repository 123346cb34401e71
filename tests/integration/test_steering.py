# mypy: disable-error-code="union-attr, index, attr-defined, unused-ignore, operator, arg-type"
"""`kubectl kondense` (the real kubectl binary running the plugin) steering the unmodified operator
process on the local Kubernetes API, with real `kondense serve` processes scraped by a real Prometheus
(the harness of test_operator_emulator): pause holds the weight across an operator SIGKILL and restart,
approve advances, promote --skip-analysis promotes, abort sends 100 % back to stable, retry starts over.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from kondense.api.crd import crd
from kondense.localcluster.apiserver import LocalAPIServer
from kondense.localcluster.prometheus import LocalPrometheus, free_port
from kondense_testing.tools import find_tool

pytestmark = pytest.mark.timeout(400)


def _harness() -> ModuleType:
    """The emulator test's harness (FakeControllers, complete_jobs, servers under load), shared as is."""
    path = Path(__file__).with_name("test_operator_emulator.py")
    spec = importlib.util.spec_from_file_location("kondense_emulator_harness", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


H = _harness()
NS, GROUP, VERSION, PLURAL = H.NS, H.GROUP, H.VERSION, H.PLURAL


class Steered:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.api = LocalAPIServer().start()
        self.prometheus = LocalPrometheus(tmp / "prometheus")
        self.kubeconfig = self.api.write_kubeconfig(tmp / "kubeconfig")
        self.log = tmp / "operator.log"
        self.operator: subprocess.Popen[bytes] | None = None
        self.env = dict(
            os.environ,
            KUBECONFIG=str(self.kubeconfig),
            KONDENSE_TICK_SECONDS="0.5",
            KONDENSE_METRICS_PORT=str(free_port()),
            KONDENSE_HEALTH_PORT=str(free_port()),
        )
        plugin = Path(sys.executable).parent / "kubectl-kondense"
        assert plugin.is_file(), "kubectl-kondense is not installed: run `make setup`"
        self.plugin_env = {
            "PATH": os.pathsep.join([str(plugin.parent), os.environ.get("PATH", "")]),
            "KUBECONFIG": str(self.kubeconfig),
            "HOME": str(tmp),
            **{k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "LANG")},
        }

    def start_operator(self) -> None:
        self.env["KONDENSE_PROMETHEUS_URL"] = self.prometheus.url
        self.operator = subprocess.Popen(
            [sys.executable, "-m", "kondense.cli", "operator", "--namespace", NS],
            env=self.env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )  # fmt: skip

    def kill_operator(self) -> None:
        assert self.operator is not None
        self.operator.send_signal(signal.SIGKILL)
        self.operator.wait(timeout=30)

    def kubectl(self, *args: str) -> str:
        done = subprocess.run(
            [find_tool("kubectl"), "kondense", *args, "-n", NS],
            env=self.plugin_env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def cmodel(self, name: str) -> dict[str, Any]:
        return client.CustomObjectsApi().get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)  # type: ignore[return-value]

    def status(self, name: str) -> dict[str, Any]:
        return self.cmodel(name).get("status") or {}

    def wait(self, what: str, predicate: Callable[[], Any], timeout: float = 90) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.operator is not None and self.operator.poll() is None, self.log.read_text()[-3000:]
            value = predicate()
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(
            f"timed out waiting for {what}; operator log tail:\n{self.log.read_text()[-3000:]}"
        )

    def stop(self) -> None:
        if self.operator is not None and self.operator.poll() is None:
            self.operator.terminate()
            self.operator.wait(timeout=30)
        self.prometheus.stop()
        self.api.stop()


@pytest.fixture
def steered(tmp_path: Path) -> Iterator[Steered]:
    cluster = Steered(tmp_path)
    try:
        config.load_kube_config(str(cluster.kubeconfig))
        client.ApiextensionsV1Api().create_custom_resource_definition(crd())
        core = client.CoreV1Api()
        core.create_namespace({"metadata": {"name": NS}})
        pvc = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        core.create_namespaced_persistent_volume_claim(NS, {"metadata": {"name": "models"}, "spec": pvc})
        cluster.prometheus.start()
        cluster.start_operator()
        yield cluster
    finally:
        cluster.stop()


class Rollout:
    """A CompressedModel brought to its canary: Jobs completed, real servers under load scraped."""

    def __init__(self, cluster: Steered, name: str, approval: str, interval: str = "5s") -> None:
        self.cluster, self.name = cluster, name
        body = H.digits_cr(name)
        body["spec"]["rollout"]["approval"] = approval
        body["spec"]["rollout"]["interval"] = interval
        # steering is under test, not latency: a gate a loaded 2-core machine cannot breach by accident
        body["spec"]["rollout"]["analysis"]["p99LatencyMs"] = {"max": 5000}
        self.servers, self.stop = H.serve_with_load(cluster.tmp, 0, name)
        H.load_forever(self.servers, name, self.stop)
        client.CustomObjectsApi().create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
        cluster.wait("4 Jobs", lambda: len(client.BatchV1Api().list_namespaced_job(NS).items) == 4)
        H.complete_jobs(H.RESULTS)
        self.controllers = H.FakeControllers(
            cluster.prometheus, dict(zip(("stable", "canary"), self.servers, strict=True))
        )
        self.controllers.__enter__()

    def close(self) -> None:
        self.controllers.__exit__()
        self.stop.set()
        for server in self.servers:
            server.stop()

    def canary(self) -> dict[str, Any]:
        return self.cluster.status(self.name).get("canary") or {}

    def deployment(self, track: str) -> Any:
        found = [
            d
            for d in client.AppsV1Api().list_namespaced_deployment(NS).items
            if d.metadata.name == f"{self.name}-{track}"
        ]
        return found[0] if found else None

    def acknowledged(self, intent: str) -> str:
        annotation = self.cluster.cmodel(self.name)["metadata"]["annotations"][f"kondense.dev/{intent}"]
        nonce = annotation.removeprefix("skip-analysis:")
        self.cluster.wait(
            f"{intent} acknowledged",
            lambda: self.cluster.status(self.name).get("intents", {}).get(intent) == nonce,
        )
        return nonce

    def reasons(self) -> list[str]:
        return [str(e.reason) for e in client.CoreV1Api().list_namespaced_event(NS).items]


def test_pause_survives_a_restart_then_resume_abort_and_retry(steered: Steered) -> None:
    # an interval long enough that the pause lands before the first analysis could step up
    rollout = Rollout(steered, "steer", "none", interval="15s")
    try:
        steered.wait("the canary serving", lambda: rollout.canary().get("readyAt"))
        steered.kubectl("pause", "steer")
        steered.wait("the pause acknowledged", lambda: steered.status("steer").get("paused"))
        # (kopf posts Events from a queue: one still queued dies with a SIGKILL; the status is the record)
        steered.wait("the Paused Event", lambda: "Paused" in rollout.reasons())
        held = rollout.canary()
        assert (held["step"], held["requestedWeight"]) == (0, 50)
        # SIGKILL and a new operator process: the pause is on the resource, not in memory
        steered.kill_operator()
        steered.start_operator()
        first_check = steered.wait(
            "an analysis after the restart", lambda: rollout.canary().get("lastAnalysisAt")
        )
        steered.wait(
            "two more passed analyses while paused",
            lambda: (
                (c := rollout.canary()).get("lastAnalysisAt", "") > first_check
                and len(c.get("checks", [])) >= 6
            ),
            timeout=90,
        )
        status = steered.status("steer")
        assert status["phase"] == "Canary" and status["paused"] is True, yaml.safe_dump(status)
        assert (status["canary"]["step"], status["canary"]["requestedWeight"]) == (0, 50)
        assert status["message"].startswith("paused: canary int8 held at 50%"), status["message"]
        assert all(c["passed"] for c in status["canary"]["checks"])  # it would have stepped up
        assert rollout.deployment("canary").spec.replicas == 2  # 50 % of 4 replicas, still
        assert "paused" in steered.kubectl("status", "steer")

        steered.kubectl("resume", "steer")
        steered.wait("the step up after resume", lambda: rollout.canary().get("requestedWeight") == 100)
        steered.kubectl("abort", "steer")
        nonce = rollout.acknowledged("abort")
        status = steered.wait(
            "RolledBack", lambda: (s := steered.status("steer")).get("phase") == "RolledBack" and s
        )
        int8 = {v["name"]: v for v in status["variants"]}["int8"]
        assert (int8["phase"], int8["reason"]) == ("RolledBack", "Aborted") and nonce in int8["message"]
        # 100 % back on stable: the canary Deployment goes, stable serves the base model at full size
        steered.wait("the canary Deployment gone", lambda: rollout.deployment("canary") is None)
        stable = rollout.deployment("stable")
        assert stable.spec.replicas == 4
        assert stable.spec.template.metadata.annotations["kondense.dev/artifact-sha256"] == (
            H.RESULTS["base"].artifact.sha256
        )
        # Events are posted after the status write (kopf's queue): wait for them, bounded
        steered.wait(
            "the Paused, Resumed and ManualAbort Events",
            lambda: {"Paused", "Resumed", "ManualAbort"} <= set(rollout.reasons()),
        )

        steered.kubectl("retry", "steer")
        rollout.acknowledged("retry")
        steered.wait(
            "a new canary of int8",
            lambda: (
                (s := steered.status("steer")).get("phase") == "Canary" and s["canary"]["variant"] == "int8"
            ),
        )
        steered.wait("the Retrying Event", lambda: "Retrying" in rollout.reasons())
    finally:
        rollout.close()


def test_approval_then_promote_skip_analysis(steered: Steered) -> None:
    rollout = Rollout(steered, "gated", "everyStep")
    try:
        status = steered.wait(
            "WaitingForApproval",
            lambda: (s := steered.status("gated")).get("phase") == "WaitingForApproval" and s,
        )
        assert status["canary"]["requestedWeight"] == 50
        assert "the step to 100% waits for approval" in status["message"]
        steered.kubectl("approve", "gated")
        rollout.acknowledged("approve")
        steered.wait("the step to 100 %", lambda: rollout.canary().get("requestedWeight") == 100)
        # at the last step everyStep waits again, before promoting
        status = steered.wait(
            "WaitingForApproval of the promotion",
            lambda: (s := steered.status("gated")).get("phase") == "WaitingForApproval" and s,
        )
        assert "promotion waits for approval" in status["message"]
        steered.kubectl("promote", "gated", "--skip-analysis")
        rollout.acknowledged("promote")
        status = steered.wait(
            "Promoted", lambda: (s := steered.status("gated")).get("phase") == "Promoted" and s, timeout=60
        )
        assert status["stable"]["variant"] == "int8"
        stable = rollout.deployment("stable")
        assert stable.spec.template.metadata.annotations["kondense.dev/artifact-sha256"] == (
            H.RESULTS["int8"].artifact.sha256
        )
        steered.wait("the Promoted Event", lambda: "Promoted" in rollout.reasons())
        reasons = rollout.reasons()
        assert reasons.count("Promoted") == 1 and {
            "WaitingForApproval",
            "Approved",
            "ManualPromotion",
        } <= set(reasons)
    finally:
        rollout.close()

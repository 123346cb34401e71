# mypy: disable-error-code="union-attr, index, attr-defined, unused-ignore, operator, arg-type, dict-item"
# (the kubernetes client types every field Optional; these tests read what they just created)
"""The unmodified operator process against the local Kubernetes API (kmock's emulator over HTTP).

Applying a CR creates the Jobs; the test completes them (Pods with termination messages, Job status);
that creates Deployments and Services; readings from a real Prometheus scraping real `kondense serve`
processes drive promotion or rollback. Every object the operator wrote validates against the
official Kubernetes schemas.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import numpy as np
import pytest
import yaml
from kubernetes import client, config

from kondense.api.crd import crd
from kondense.loadgen.requests import request_bodies
from kondense.loadgen.runner import run_load
from kondense.localcluster.apiserver import LocalAPIServer
from kondense.localcluster.prometheus import LocalPrometheus, free_port
from kondense_testing.builders import DIGITS, job_result
from kondense_testing.onnx_models import artifact_dir
from kondense_testing.servers import ServerProcess, start_server

NS = "ml"
GROUP, VERSION, PLURAL = "kondense.dev", "v1alpha1", "compressedmodels"
pytestmark = pytest.mark.timeout(300)


class Receiver:
    """A notification receiver on loopback (on the operator's KONDENSE_WEBHOOK_ALLOWED_URLS)."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                receiver.received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Cluster:
    api: LocalAPIServer
    kubeconfig: Path
    prometheus: LocalPrometheus
    metrics_port: int
    operator: subprocess.Popen[bytes]
    log: Path
    receiver: Receiver

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi()

    def cmodel(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)  # type: ignore[return-value]

    def wait(self, what: str, predicate: Callable[[], Any], timeout: float = 90) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.operator.poll() is None, f"operator exited: {self.log.read_text()[-3000:]}"
            value = predicate()
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(
            f"timed out waiting for {what}; operator log tail:\n{self.log.read_text()[-3000:]}"
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    api = LocalAPIServer().start()
    prometheus = LocalPrometheus(tmp_path / "prometheus")
    receiver = Receiver()
    operator = None
    try:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        config.load_kube_config(str(kubeconfig))
        client.ApiextensionsV1Api().create_custom_resource_definition(crd())
        core = client.CoreV1Api()
        core.create_namespace({"metadata": {"name": NS}})
        pvc = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        core.create_namespaced_persistent_volume_claim(NS, {"metadata": {"name": "models"}, "spec": pvc})
        prometheus.start()
        metrics_port = free_port()
        env = dict(
            os.environ,
            KUBECONFIG=str(kubeconfig),
            KONDENSE_TICK_SECONDS="0.5",
            KONDENSE_IDLE_RESYNC_SECONDS="2",  # settled objects too are reconciled within seconds
            KONDENSE_METRICS_PORT=str(metrics_port),
            KONDENSE_HEALTH_PORT=str(free_port()),
            KONDENSE_PROMETHEUS_URL=prometheus.url,
            KONDENSE_WEBHOOK_ALLOWED_URLS=receiver.url,
        )
        log = tmp_path / "operator.log"
        operator = subprocess.Popen(
            [sys.executable, "-m", "kondense.cli", "operator", "--namespace", NS],
            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )  # fmt: skip
        yield Cluster(api, kubeconfig, prometheus, metrics_port, operator, log, receiver)
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=30)
        receiver.close()
        prometheus.stop()
        api.stop()


class FakeControllers:
    """What kube-controller-manager and the kubelet would do for the test: each Deployment reports its
    pods ready and has one Pod object per template (named after the artifact, like a ReplicaSet's hash);
    Prometheus scrapes the test's real server for that track under the current pod's name."""

    def __init__(self, prometheus: LocalPrometheus, servers: dict[str, ServerProcess]) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.prometheus, self.servers = prometheus, servers

    def _run(self) -> None:
        apps, core = client.AppsV1Api(), client.CoreV1Api()
        while not self.stop.is_set():
            targets = []
            for d in apps.list_namespaced_deployment(NS).items:
                replicas = d.spec.replicas or 0
                status = {"observedGeneration": d.metadata.generation, "replicas": replicas,
                          "readyReplicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas}  # fmt: skip
                if (d.status is None or d.status.observed_generation != d.metadata.generation
                        or (d.status.ready_replicas or 0) != replicas):  # fmt: skip
                    apps.patch_namespaced_deployment_status(d.metadata.name, NS, {"status": status})
                template = d.spec.template.metadata
                pod_name = f"{d.metadata.name}-{template.annotations['kondense.dev/artifact-sha256'][:8]}"
                track = template.labels["kondense.dev/track"]
                if (
                    replicas
                    and not core.list_namespaced_pod(NS, field_selector=f"metadata.name={pod_name}").items
                ):
                    core.create_namespaced_pod(NS, {
                        "metadata": {"name": pod_name, "labels": template.labels, "annotations": template.annotations},
                        "spec": d.spec.template.spec,
                    })  # fmt: skip
                if replicas and track in self.servers:
                    targets.append(
                        (f"127.0.0.1:{self.servers[track].port}", {"namespace": NS, "pod": pod_name})
                    )
            self.prometheus.set_targets(targets)
            self.stop.wait(0.3)

    def __enter__(self) -> FakeControllers:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def complete_jobs(results: dict[str, Any]) -> None:
    """Finish every Job like the kubelet would: a Pod whose container terminated with the result as its
    termination message, then the Job's own status."""
    batch, core = client.BatchV1Api(), client.CoreV1Api()
    for job in batch.list_namespaced_job(
        NS, label_selector="app.kubernetes.io/name=kondense-compression"
    ).items:
        variant = job.metadata.labels["kondense.dev/variant"]
        outcome = results[variant]
        labels = {**job.spec.template.metadata.labels, "job-name": job.metadata.name}
        pod = core.create_namespaced_pod(NS, {
            "metadata": {"name": f"{job.metadata.name}-x1", "labels": labels,
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job.metadata.name,
                                              "uid": job.metadata.uid, "controller": True}]},
            "spec": job.spec.template.spec,
        })  # fmt: skip
        failed = outcome == "OOMKilled"
        terminated = {"exitCode": 137 if failed else 0, "reason": "OOMKilled" if failed else "Completed",
                      "message": "" if failed else outcome.model_dump_json()}  # fmt: skip
        core.patch_namespaced_pod_status(pod.metadata.name, NS, {"status": {
            "phase": "Failed" if failed else "Succeeded",
            "containerStatuses": [{"name": "compress", "image": "x", "imageID": "", "ready": False,
                                   "restartCount": 0, "state": {"terminated": terminated}}],
        }})  # fmt: skip
        condition = {"type": "Failed" if failed else "Complete", "status": "True",
                     "reason": "BackoffLimitExceeded" if failed else "Completed"}  # fmt: skip
        batch.patch_namespaced_job_status(job.metadata.name, NS, {"status": {
            "conditions": [condition], "succeeded": 0 if failed else 1, "failed": 1 if failed else 0}})  # fmt: skip


def digits_cr(name: str) -> dict[str, Any]:
    body = copy.deepcopy(DIGITS)
    body["metadata"] = {"name": name, "namespace": NS}
    spec = body["spec"]
    spec["targets"] = [spec["targets"][0], spec["targets"][2], spec["targets"][3]]  # int8, fp16, slim-int8
    spec["rollout"] = {
        "steps": [50, 100],
        "interval": "5s",
        "failureLimit": 1,
        "analysis": {"window": "10s", "minRequests": 5, "p99LatencyMs": {"max": 40}, "errorRate": {"max": 0.05},
                     "accuracyDelta": {"max": 0.05}},
    }  # fmt: skip
    return body


RESULTS = {
    "base": job_result("base", size=1.0),
    "int8": job_result("int8", delta=0.003, size=0.26),
    "fp16": job_result("fp16", delta=0.0, size=0.5),
    "slim-int8": "OOMKilled",
}


def serve_with_load(
    tmp: Path, canary_latency_ms: int, name: str
) -> tuple[list[ServerProcess], threading.Event]:
    """Real stable/canary servers scraped by Prometheus, with steady load on both."""
    model = artifact_dir(tmp / "model")
    stable = start_server(model, name, "--variant", "stable")
    canary = start_server(model, name, "--variant", "canary", "--inject-latency-ms", str(canary_latency_ms),
                          "--shadow-of", stable.url, "--task", "classification")  # fmt: skip
    return [stable, canary], threading.Event()


def load_forever(servers: list[ServerProcess], name: str, stop: threading.Event) -> threading.Thread:
    rng = np.random.default_rng(0)
    bodies = request_bodies({"x": rng.normal(size=(20, 64)).astype(np.float32)})

    def run() -> None:
        async def main() -> None:
            while not stop.is_set():
                await asyncio.gather(
                    *(run_load(s.url, name, bodies, rps=20, duration_s=1.0) for s in servers)
                )

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def validate_everything(api: LocalAPIServer) -> None:
    checked = 0
    for obj in api.dump():
        if obj.get("apiVersion", "").startswith(("kondense.dev", "apiextensions.k8s.io", "gateway.")):
            continue
        # status is the server's (the emulator's HPA status lacks what a controller would fill in)
        no_status = obj["kind"] in ("Namespace", "HorizontalPodAutoscaler")
        obj = {k: v for k, v in obj.items() if k != "status"} if no_status else obj
        kubernetes_validate.validate(obj, "1.33", strict=True)
        checked += 1
    assert checked > 5


def run_rollout(
    cluster: Cluster,
    tmp_path: Path,
    name: str,
    canary_latency_ms: int,
    customize: Callable[[dict[str, Any]], None] = lambda body: None,
) -> dict[str, Any]:
    servers, stop = serve_with_load(tmp_path, canary_latency_ms, name)
    try:
        load_forever(servers, name, stop)
        body = digits_cr(name)
        customize(body)
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
        batch = client.BatchV1Api()
        jobs = cluster.wait(
            "4 Jobs", lambda: (items := batch.list_namespaced_job(NS).items) and len(items) == 4 and items
        )
        assert sorted(j.metadata.labels["kondense.dev/variant"] for j in jobs) == [
            "base",
            "fp16",
            "int8",
            "slim-int8",
        ]
        assert cluster.cmodel(name)["status"]["phase"] == "Compressing"
        assert client.AppsV1Api().list_namespaced_deployment(NS).items == []  # nothing served before the base
        complete_jobs(RESULTS)
        with FakeControllers(cluster.prometheus, dict(zip(("stable", "canary"), servers, strict=True))):
            cluster.wait("a canary", lambda: cluster.cmodel(name).get("status", {}).get("phase") == "Canary")
            services = {s.metadata.name for s in client.CoreV1Api().list_namespaced_service(NS).items}
            assert services == {name, f"{name}-stable", f"{name}-canary"}
            return cluster.wait(
                "the end of the rollout",
                lambda: (
                    (o := cluster.cmodel(name))["status"]["phase"] in ("Promoted", "RolledBack", "Failed")
                    and o
                ),
                timeout=120,
            )
    finally:
        stop.set()
        for server in servers:
            server.stop()


def test_apply_compress_canary_promote(cluster: Cluster, tmp_path: Path) -> None:
    final = run_rollout(cluster, tmp_path, "digits", canary_latency_ms=0)
    status = final["status"]
    assert status["phase"] == "Promoted", yaml.safe_dump(status)
    assert status["stable"]["variant"] == "int8"
    assert {v["name"]: v["phase"] for v in status["variants"]} == {
        "int8": "Promoted", "fp16": "Succeeded", "slim-int8": "Failed"}  # fmt: skip
    assert {v["name"]: v.get("reason") for v in status["variants"]}["slim-int8"] == "OOMKilled"
    assert [c["sli"] for c in status["canary"]["checks"]].count("p99LatencyMs") == 2  # one per step
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    stable = client.AppsV1Api().read_namespaced_deployment("digits-stable", NS)
    assert (
        stable.spec.template.metadata.annotations["kondense.dev/artifact-sha256"]
        == RESULTS["int8"].artifact.sha256
    )  # type: ignore[union-attr]
    cluster.wait("the canary Deployment gone", lambda: not any(
        d.metadata.name == "digits-canary" for d in client.AppsV1Api().list_namespaced_deployment(NS).items))  # fmt: skip
    reasons = [e.reason for e in client.CoreV1Api().list_namespaced_event(NS).items]
    assert {"Compressing", "CanaryStarted", "CanaryStep", "Promoting", "Promoted"} <= set(reasons)
    metrics = httpx.get(f"http://127.0.0.1:{cluster.metrics_port}/metrics").text
    assert 'kondense_rollouts_total{result="promoted"} 1.0' in metrics
    validate_everything(cluster.api)
    # deleting the CR garbage-collects everything it owned
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "digits")
    cluster.wait("garbage collection", lambda: not client.AppsV1Api().list_namespaced_deployment(NS).items
                 and not client.BatchV1Api().list_namespaced_job(NS).items)  # fmt: skip


def test_latency_breach_rolls_back_down_the_ladder(cluster: Cluster, tmp_path: Path) -> None:
    final = run_rollout(cluster, tmp_path, "slow", canary_latency_ms=80)
    status = final["status"]
    assert status["phase"] == "RolledBack", yaml.safe_dump(status)
    phases = {v["name"]: v["phase"] for v in status["variants"]}
    assert phases["int8"] == "RolledBack" and phases["fp16"] == "RolledBack"
    breaches = [c for c in status["canary"]["checks"] if c["sli"] == "p99LatencyMs" and not c["passed"]]
    assert {c["variant"] for c in breaches} == {"int8", "fp16"}
    assert all(c["value"] > c["threshold"] == 40 and c["window"] for c in breaches)
    assert status["stable"].get("variant") is None  # the base model still serves
    stable = client.AppsV1Api().read_namespaced_deployment("slow-stable", NS)
    assert stable.spec.replicas == 4
    events = client.CoreV1Api().list_namespaced_event(NS).items
    assert [e.reason for e in events].count("RolledBack") == 2
    validate_everything(cluster.api)


def reconcile_count(cluster: Cluster) -> float:
    metrics = httpx.get(f"http://127.0.0.1:{cluster.metrics_port}/metrics").text
    line = next(x for x in metrics.splitlines() if x.startswith("kondense_reconcile_duration_seconds_count"))
    return float(line.split()[-1])


def test_autoscaled_breach_reaches_the_notification_with_its_fields(cluster: Cluster, tmp_path: Path) -> None:
    """serving.autoscaling gives each track an HPA the operator then leaves replicas to; a latency
    breach reaches a notification receiver (URL from a Secret, on the allow-list) with value,
    threshold, window and SLI as fields."""
    import base64

    secret = {"url": base64.b64encode(cluster.receiver.url.encode()).decode()}
    client.CoreV1Api().create_namespaced_secret(NS, {"metadata": {"name": "hooks"}, "data": secret})
    hpas = client.AutoscalingV2Api()
    seen: dict[str, dict[str, Any]] = {}

    def listed() -> list[dict[str, Any]]:  # raw: the emulator's status has no desiredReplicas yet
        response = hpas.list_namespaced_horizontal_pod_autoscaler(NS, _preload_content=False)
        return list(json.loads(response.data)["items"])

    def customize(body: dict[str, Any]) -> None:
        body["spec"]["serving"]["autoscaling"] = {
            "minReplicas": 2,
            "maxReplicas": 6,
            "targetCPUUtilization": 60,
        }
        body["spec"]["notifications"] = [
            {
                "name": "oncall",
                "type": "webhook",
                "severity": "warning",
                "secretKeyRef": {"name": "hooks", "key": "url"},
            }
        ]

    def watch_hpas() -> None:
        while not done.is_set():
            for hpa in listed():
                seen[hpa["metadata"]["name"]] = {
                    "min": hpa["spec"]["minReplicas"],
                    "max": hpa["spec"]["maxReplicas"],
                }
            done.wait(0.3)

    done = threading.Event()
    watcher = threading.Thread(target=watch_hpas, daemon=True)
    watcher.start()
    try:
        final = run_rollout(cluster, tmp_path, "scaled", canary_latency_ms=80, customize=customize)
    finally:
        done.set()
        watcher.join(timeout=10)
    assert final["status"]["phase"] == "RolledBack", yaml.safe_dump(final["status"])
    # 2..6 split by the replicas router at the step the canary reached before the breach rolled it back
    # (25 %: 1..2, 50 %: 1..3; the continuous analysis often cuts it at the first step); the canary's HPA
    # went with its Deployment
    assert seen["scaled-canary"] in ({"min": 1, "max": 2}, {"min": 1, "max": 3}), seen
    assert "scaled-stable" in seen
    cluster.wait(
        "the canary's HPA gone", lambda: [h["metadata"]["name"] for h in listed()] == ["scaled-stable"]
    )
    (stable_hpa,) = listed()
    assert (stable_hpa["spec"]["minReplicas"], stable_hpa["spec"]["maxReplicas"]) == (
        2,
        6,
    )  # stable whole again
    apps = client.AppsV1Api()
    stable = apps.read_namespaced_deployment("scaled-stable", NS)
    assert stable.metadata.annotations["kondense.dev/autoscaled"] == "true"
    # the HPA scales stable within its bounds: the operator does not undo it
    apps.patch_namespaced_deployment("scaled-stable", NS, {"spec": {"replicas": 5}})
    generation = apps.read_namespaced_deployment("scaled-stable", NS).metadata.generation
    reconciles = reconcile_count(cluster)
    # settled objects are reconciled every 2 s (KONDENSE_IDLE_RESYNC_SECONDS): 12 reconciles over the few
    # objects of this module's cluster include several of this one
    cluster.wait("twelve more reconciles", lambda: reconcile_count(cluster) >= reconciles + 12, timeout=180)
    after = apps.read_namespaced_deployment("scaled-stable", NS)
    assert after.spec.replicas == 5 and after.metadata.generation == generation

    def latency_breaches() -> list[dict[str, Any]]:  # (a no-data check may come first: sli "requests")
        notices = [n for n in cluster.receiver.received if n["reason"] in ("CheckFailed", "RolledBack")]
        return [b for n in notices for b in n.get("breaches") or [] if b.get("sli") == "p99LatencyMs"]

    fields = cluster.wait("a latency breach notice", latency_breaches)[0]
    assert fields["sli"] == "p99LatencyMs" and fields["value"] > fields["threshold"] == 40
    assert fields["window"] and fields["variant"] in ("int8", "fp16")
    validate_everything(cluster.api)  # the HPAs included


def test_invalid_spec_gets_a_condition_and_no_children(cluster: Cluster) -> None:
    body = digits_cr("broken")
    body["spec"]["rollout"]["steps"] = [50, 25, 100]
    # the API server would refuse it (CEL); this one does not run CEL, so the operator must cope
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
    status = cluster.wait("an Invalid condition", lambda: cluster.cmodel("broken").get("status"))
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Invalid"]["status"] == "True"
    assert "spec.rollout.steps: must be strictly increasing" in conditions["Invalid"]["message"]
    assert status["phase"] == "Failed"
    time.sleep(2)
    assert client.BatchV1Api().list_namespaced_job(NS).items == []
    # a missing PVC is reported, not crashed on
    body = digits_cr("nopvc")
    body["spec"]["baseModel"]["uri"] = "pvc://elsewhere/model.onnx"
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
    status = cluster.wait("a PVC message", lambda: cluster.cmodel("nopvc").get("status"))
    assert "PersistentVolumeClaim ml/elsewhere does not exist" in status["message"]
    assert cluster.operator.poll() is None

# mypy: disable-error-code="arg-type"
"""The real controller shell, in-process, against the embedded local API server: no operator process,
no sleeps. The test plays the cluster's own controllers (Job controller, kubelet, Deployment
controller) by writing the objects' status through the API, as they would."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kubernetes import client, config

from kondense.api.crd import crd
from kondense.localcluster.apiserver import LocalAPIServer
from kondense.operator.controller import Controller
from kondense.operator.kube import KubeClient
from kondense.operator.rollout import Event
from kondense.operator.settings import OperatorSettings
from kondense_testing.builders import DIGITS, job_result

NS = "ml"
GROUP, VERSION, PLURAL = "kondense.dev", "v1alpha1", "compressedmodels"
T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
PROMETHEUS = "http://prometheus.monitoring:9090"


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    """A 4xx as the real API server sends it (a Status object)."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": reason, "message": message, "code": code}  # fmt: skip


class Harness:
    def __init__(self, api: LocalAPIServer, settings: OperatorSettings | None = None) -> None:
        self.api = api
        self.events: list[Event] = []
        self.kube = KubeClient()
        self.controller = Controller(
            settings or OperatorSettings(prometheus_url=PROMETHEUS), self.kube, self.post
        )
        self.now = T0

    def post(self, body: dict[str, Any], event: Event) -> None:
        self.events.append(event)

    def create(self, name: str, **spec: Any) -> None:
        """The digits example (fp16 only) named ``name``, with ``spec`` overrides."""
        body = copy.deepcopy(DIGITS)
        body["metadata"] = {"name": name, "namespace": NS}
        body["spec"]["targets"] = [body["spec"]["targets"][2]]  # fp16 only
        body["spec"].update(spec)
        client.CustomObjectsApi().create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        client.CustomObjectsApi().patch_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, name, {"spec": spec}
        )

    def reconcile(self, name: str) -> dict[str, Any]:
        self.now += timedelta(seconds=2)
        self.controller.reconcile(NS, name, self.now)
        body = self.kube.get_cmodel(NS, name)
        assert body is not None
        return body


@contextmanager
def local_api(tmp_path: Path, settings: OperatorSettings | None = None) -> Iterator[Harness]:
    """A fresh local API server with the CRD, namespace ``ml`` and its PVC ``models``."""
    # objects the CRD schema rejects are stored anyway: the operator's own checks are under test
    with LocalAPIServer(validate_custom_resources=False) as api:
        config.load_kube_config(str(api.write_kubeconfig(tmp_path / "kubeconfig")))
        client.ApiextensionsV1Api().create_custom_resource_definition(crd())
        core = client.CoreV1Api()
        core.create_namespace({"metadata": {"name": NS}})
        pvc = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        core.create_namespaced_persistent_volume_claim(NS, {"metadata": {"name": "models"}, "spec": pvc})
        yield Harness(api, settings)


def conditions(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in body["status"].get("conditions", [])}


def terminate_pod(job: dict[str, Any], suffix: str, terminated: dict[str, Any], phase: str) -> None:
    """What the kubelet does: a Pod of ``job`` whose container ended as ``terminated``."""
    core = client.CoreV1Api()
    meta = job["metadata"]
    labels = {**job["spec"]["template"]["metadata"]["labels"], "job-name": meta["name"]}
    pod = {
        "metadata": {"name": f"{meta['name']}-{suffix}", "labels": labels},
        "spec": job["spec"]["template"]["spec"],
    }
    core.create_namespaced_pod(NS, pod)
    core.patch_namespaced_pod_status(f"{meta['name']}-{suffix}", NS, {"status": {
        "phase": phase,
        "containerStatuses": [{"name": "compress", "image": "x", "imageID": "", "ready": False,
                               "restartCount": 0, "state": {"terminated": terminated}}]}})  # fmt: skip


def finish_job(job: dict[str, Any], conditions: list[dict[str, Any]], succeeded: int = 0) -> None:
    """What the Job controller does once its Pod ended."""
    client.BatchV1Api().patch_namespaced_job_status(
        job["metadata"]["name"], NS, {"status": {"conditions": conditions, "succeeded": succeeded}}
    )


def jobs() -> list[dict[str, Any]]:
    return KubeClient().list_jobs(NS, "kondense.dev/variant")


def complete_jobs() -> None:
    """Every compression Job succeeds with a result in its termination message."""
    for job in jobs():
        variant = job["metadata"]["labels"]["kondense.dev/variant"]
        result = job_result(variant, size=1.0 if variant == "base" else 0.5)
        terminated = {"exitCode": 0, "reason": "Completed", "message": result.model_dump_json()}
        terminate_pod(job, "x", terminated, "Succeeded")
        finish_job(job, [{"type": "Complete", "status": "True"}], succeeded=1)

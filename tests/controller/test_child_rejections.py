# mypy: disable-error-code="union-attr, index, attr-defined, unused-ignore, arg-type, call-overload, operator, dict-item"
"""A 4xx from the API server on a child object becomes a condition on the CompressedModel and a phase
that says so, never a silent retry loop with the error only in the log. The real controller shell
(in-process) against the embedded local API server; the refusals are injected with kmock's DSL as
the real API server would send them (a Status body with reason and message)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kmock
import pytest
from kubernetes import client, config
from prometheus_client import REGISTRY

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
pytestmark = pytest.mark.timeout(120)


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": reason, "message": message, "code": code}  # fmt: skip


class Harness:
    def __init__(self, api: LocalAPIServer) -> None:
        self.api = api
        self.events: list[Event] = []
        self.controller = Controller(
            OperatorSettings(prometheus_url="http://prometheus.monitoring:9090"), KubeClient(), self.post
        )
        self.now = T0

    def post(self, body: dict[str, Any], event: Event) -> None:
        self.events.append(event)

    def create(self, name: str, **spec: Any) -> None:
        body = copy.deepcopy(DIGITS)
        body["metadata"] = {"name": name, "namespace": NS}
        body["spec"]["targets"] = [body["spec"]["targets"][2]]  # fp16 only
        body["spec"].update(spec)
        client.CustomObjectsApi().create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)

    def reconcile(self, name: str) -> dict[str, Any]:
        self.now += timedelta(seconds=2)
        self.controller.reconcile(NS, name, self.now)
        return client.CustomObjectsApi().get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)  # type: ignore[return-value]


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    # objects the CRD schema rejects are stored anyway: the operator's own checks are under test
    with LocalAPIServer(validate_custom_resources=False) as api:
        config.load_kube_config(str(api.write_kubeconfig(tmp_path / "kubeconfig")))
        client.ApiextensionsV1Api().create_custom_resource_definition(crd())
        core = client.CoreV1Api()
        core.create_namespace({"metadata": {"name": NS}})
        pvc = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        core.create_namespaced_persistent_volume_claim(NS, {"metadata": {"name": "models"}, "spec": pvc})
        yield Harness(api)


def conditions(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in body["status"].get("conditions", [])}


def complete_jobs() -> None:
    """What the Job controller and kubelet would do: a terminated Pod with the result, then Job status."""
    batch, core = client.BatchV1Api(), client.CoreV1Api()
    for job in batch.list_namespaced_job(NS).items:
        variant = job.metadata.labels["kondense.dev/variant"]
        result = job_result(variant, size=1.0 if variant == "base" else 0.5)
        labels = {**job.spec.template.metadata.labels, "job-name": job.metadata.name}
        pod = core.create_namespaced_pod(NS, {"metadata": {"name": f"{job.metadata.name}-x", "labels": labels},
                                              "spec": job.spec.template.spec})  # fmt: skip
        terminated = {"exitCode": 0, "reason": "Completed", "message": result.model_dump_json()}
        core.patch_namespaced_pod_status(pod.metadata.name, NS, {"status": {
            "phase": "Succeeded",
            "containerStatuses": [{"name": "compress", "image": "x", "imageID": "", "ready": False,
                                   "restartCount": 0, "state": {"terminated": terminated}}]}})  # fmt: skip
        batch.patch_namespaced_job_status(job.metadata.name, NS, {"status": {
            "conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}})  # fmt: skip


def test_a_refused_job_fails_its_variant_with_the_api_message_and_is_not_retried(harness: Harness) -> None:
    refused = harness.api.emulator[kmock.action.CREATE, kmock.resource("batch", "v1", "jobs")]
    refused = (
        refused
        << 422
        << status_body(422, "Invalid", 'Job.batch "x" is invalid: spec.template: Invalid value')
    )
    harness.create("digits")
    body = harness.reconcile("digits")
    applied = conditions(body)["Applied"]
    assert applied["status"] == "False" and applied["reason"] == "Invalid"
    assert (
        "Job ml/digits-base-" in applied["message"] and "spec.template: Invalid value" in applied["message"]
    )
    variants = {v["name"]: v for v in [body["status"]["base"], *body["status"]["variants"]]}
    assert all(v["phase"] == "Failed" and v["reason"] == "JobRejected" for v in variants.values())
    assert any(e.reason == "Rejected" and e.type == "Warning" for e in harness.events)
    assert REGISTRY.get_sample_value("kondense_child_rejections_total", {"kind": "Job", "reason": "Invalid"})
    body = harness.reconcile("digits")
    assert body["status"]["phase"] == "Failed"
    assert "could not be prepared" in body["status"]["message"]
    attempts = len(list(refused))
    for _ in range(3):
        harness.reconcile("digits")
    assert len(list(refused)) == attempts  # no retry loop


def test_a_refused_service_fails_the_phase_and_names_the_child(harness: Harness) -> None:
    harness.create("digits")
    harness.reconcile("digits")
    refused = harness.api.emulator[kmock.action.CREATE, kmock.resource("", "v1", "services")]
    refused = (
        refused
        << 422
        << status_body(422, "Invalid", 'Service "digits" is invalid: metadata.name: Invalid value')
    )
    complete_jobs()
    body = harness.reconcile("digits")
    assert body["status"]["phase"] == "Failed"
    applied = conditions(body)["Applied"]
    assert applied["status"] == "False" and applied["reason"] == "Invalid"
    assert "Service ml/digits" in applied["message"] and "metadata.name: Invalid value" in applied["message"]
    assert conditions(body)["Ready"]["status"] == "False"
    assert "rejected by the API server" in body["status"]["message"]


def test_a_refused_read_is_a_condition_not_an_exception(harness: Harness) -> None:
    harness.create("digits")
    harness.reconcile("digits")
    forbidden = 'jobs.batch is forbidden: User "system:serviceaccount:kondense:kondense" cannot list resource'
    (
        harness.api.emulator[kmock.action.LIST, kmock.resource("batch", "v1", "jobs")]
        << 403
        << status_body(403, "Forbidden", forbidden)
    )
    body = harness.reconcile("digits")  # no ApiException escapes
    applied = conditions(body)["Applied"]
    assert applied["status"] == "False" and applied["reason"] == "Forbidden"
    assert "cannot list resource" in applied["message"]


def test_a_name_the_api_would_refuse_for_children_is_invalid_before_anything_is_created(
    harness: Harness,
) -> None:
    harness.create("1st.digits")  # the emulator does not run the CRD's CEL rules: the operator checks too
    body = harness.reconcile("1st.digits")
    invalid = conditions(body)["Invalid"]
    assert invalid["status"] == "True" and invalid["message"].startswith("metadata.name: '1st.digits'")
    assert body["status"]["phase"] == "Failed"
    assert client.BatchV1Api().list_namespaced_job(NS).items == []


def test_a_status_edited_into_garbage_is_repaired_not_a_crash_every_tick(harness: Harness) -> None:
    harness.create("digits")
    harness.reconcile("digits")
    custom = client.CustomObjectsApi()
    garbage = {"status": {"phase": "Bogus", "canary": {"weight": 500, "checks": [{"time": 1}]},
                          "variants": "not a list"}}  # fmt: skip
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "digits", garbage)
    body = harness.reconcile("digits")  # no ValidationError escapes
    assert any(e.reason == "BadStatus" and "status.phase" in e.message for e in harness.events)
    assert body["status"]["phase"] in ("Compressing", "Pending")
    assert (body["status"].get("canary") or {}).get("weight", 0) == 0  # the default, not 500
    harness.events.clear()
    harness.reconcile("digits")
    assert not any(e.reason == "BadStatus" for e in harness.events)  # repaired once, then quiet


def test_a_child_deleted_between_read_and_patch_is_not_a_rejection(harness: Harness) -> None:
    kube = KubeClient()
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": NS},
        "data": {"a": "1"},
    }
    assert kube.apply(copy.deepcopy(cm)) == "created"
    (
        harness.api.emulator[kmock.action.UPDATE, kmock.resource("", "v1", "configmaps")]
        << 404
        << status_body(404, "NotFound", 'configmaps "c" not found')
    )
    assert kube.apply({**cm, "data": {"a": "2"}}) == "gone"  # the next tick creates it again

# mypy: disable-error-code="arg-type"
"""The shell's translations, in-process against the local API server (no operator process, no sleeps):
Jobs and their Pods -> ``JobObservation``, Deployments -> ``TrackObservation``, the preflight
(PVCs, images, routes, Prometheus URLs) and a spec that does not validate -> ``World.problems``.
The cluster's controllers are played by writing status through the API, as they would."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client

from kondense.operator.controller import track_observation
from kondense.operator.naming import SHA_ANNOTATION, Names
from kondense_testing.builders import job_result
from kondense_testing.inprocess import (
    NS,
    Harness,
    complete_jobs,
    conditions,
    finish_job,
    jobs,
    terminate_pod,
)


def variants(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    status = body["status"]
    return {v["name"]: v for v in [status["base"], *status["variants"]]}


def job_of(variant: str) -> dict[str, Any]:
    return next(j for j in jobs() if j["metadata"]["labels"]["kondense.dev/variant"] == variant)


# --- Jobs -> JobObservation ------------------------------------------------------------------------

RESULT = job_result("fp16", size=0.5).model_dump_json()
FAILED = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "backoff"}]


@dataclass(frozen=True)
class JobCase:
    id: str
    terminated: dict[str, Any] | None  # the Pod's container, None: no Pod left
    conditions: list[dict[str, Any]]
    succeeded: int
    phase: str
    reason: str | None
    message: str | None  # contained in the variant's message


JOB_CASES = [
    JobCase("complete with its result", {"exitCode": 0, "message": RESULT}, [{"type": "Complete", "status": "True"}],
            1, "Succeeded", None, None),
    JobCase("succeeded counts without the condition", {"exitCode": 0, "message": RESULT}, [], 1, "Succeeded",
            None, None),
    JobCase("an unreadable result", {"exitCode": 0, "message": "{not json"}, [{"type": "Complete", "status": "True"}],
            1, "Failed", "UnreadableResult", "unreadable result in the termination message: '{not json'"),
    JobCase("OOMKilled from the Pod", {"exitCode": 137, "reason": "OOMKilled"}, FAILED, 0, "Failed", "OOMKilled",
            "backoff"),
    JobCase("the Job's reason without a Pod", None, [{"type": "Failed", "status": "True",
            "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}], 0,
            "Failed", "DeadlineExceeded", "longer than specified deadline"),
    JobCase("the result's message wins", {"exitCode": 2, "message": job_result("fp16", ok=False,
            reason="BadInput").model_dump_json()}, FAILED, 0, "Failed", "BackoffLimitExceeded", None),
    JobCase("still running", None, [], 0, "Running", None, None),
]  # fmt: skip


@pytest.mark.parametrize("case", JOB_CASES, ids=[c.id for c in JOB_CASES])
def test_a_jobs_state_and_its_pods_become_the_variants_outcome(harness: Harness, case: JobCase) -> None:
    harness.create("digits")
    harness.reconcile("digits")
    job = job_of("fp16")
    if case.terminated is not None:
        terminate_pod(job, "a", case.terminated, "Failed" if case.conditions == FAILED else "Succeeded")
    finish_job(job, case.conditions, case.succeeded)
    fp16 = variants(harness.reconcile("digits"))["fp16"]
    assert fp16["phase"] == case.phase, fp16
    assert fp16.get("reason") == case.reason
    if case.message is not None:
        assert case.message in fp16["message"]
    if case.phase == "Succeeded":  # the operator chose the output: the artifact's URI is its own
        run = harness.reconcile("digits")["status"]["hashes"]["run"]
        assert fp16["artifact"]["uri"].startswith("pvc://") and run in fp16["artifact"]["uri"]


def test_a_pod_is_matched_to_its_job_by_owner_reference_too(harness: Harness) -> None:
    harness.create("digits")
    harness.reconcile("digits")
    job = job_of("fp16")
    meta = job["metadata"]
    labels = {k: v for k, v in job["spec"]["template"]["metadata"]["labels"].items() if k != "job-name"}
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"]}
    pod = {"metadata": {"name": "by-owner", "labels": labels, "ownerReferences": [owner]},
           "spec": job["spec"]["template"]["spec"]}  # fmt: skip
    core = client.CoreV1Api()
    core.create_namespaced_pod(NS, pod)
    terminated = {"exitCode": 137, "reason": "OOMKilled"}
    core.patch_namespaced_pod_status("by-owner", NS, {"status": {"phase": "Failed", "containerStatuses": [
        {"name": "compress", "image": "x", "imageID": "", "ready": False, "restartCount": 0,
         "state": {"terminated": terminated}}]}})  # fmt: skip
    finish_job(job, FAILED)
    assert variants(harness.reconcile("digits"))["fp16"]["reason"] == "OOMKilled"


# --- Deployments -> TrackObservation -----------------------------------------------------------------


def rolled_out(n: int) -> dict[str, int]:
    return {"observedGeneration": 1, "replicas": n, "readyReplicas": n, "updatedReplicas": n}


TRACKS = [  # (id, the Deployment controller's status for n replicas, settled, ready pods)
    ("no status yet", lambda n: {}, False, lambda n: 0),
    ("rolled out", rolled_out, True, lambda n: n),
    ("generation not observed", lambda n: {**rolled_out(n), "observedGeneration": 0}, False, lambda n: n),
    ("a surge pod left", lambda n: {**rolled_out(n), "replicas": n + 1, "readyReplicas": n + 1}, False,
     lambda n: n + 1),
    ("one pod not ready", lambda n: {**rolled_out(n), "readyReplicas": n - 1}, False, lambda n: n - 1),
]  # fmt: skip


@pytest.mark.parametrize(("status", "settled", "ready"), [t[1:] for t in TRACKS], ids=[t[0] for t in TRACKS])
def test_a_deployment_as_the_rollout_core_sees_it(
    harness: Harness, status: Callable[[int], dict[str, int]], settled: bool, ready: Callable[[int], int]
) -> None:
    harness.create("digits")
    harness.reconcile("digits")
    complete_jobs()
    body = harness.reconcile("digits")
    name = Names("digits").deployment("stable")
    deployment = harness.kube.get("Deployment", name, NS)
    assert deployment is not None
    n, generation = deployment["spec"]["replicas"], deployment["metadata"]["generation"]
    assert n >= 2
    patched = status(n)
    if patched:
        patched["observedGeneration"] *= generation
        client.AppsV1Api().patch_namespaced_deployment_status(name, NS, {"status": patched})
    seen = track_observation(harness.kube.get("Deployment", name, NS))
    assert seen is not None
    assert (seen.replicas, seen.ready, seen.settled) == (n, ready(n), settled)
    assert seen.sha256 == body["status"]["stable"]["artifact"]["sha256"]
    assert seen.sha256 == deployment["spec"]["template"]["metadata"]["annotations"][SHA_ANNOTATION]
    assert track_observation(harness.kube.get("Deployment", "nothing", NS)) is None


# --- preflight and Invalid ----------------------------------------------------------------------------------

PREFLIGHT = [
    ("a missing PVC", {"baseModel": {"uri": "pvc://lost/model.onnx"}},
     "PersistentVolumeClaim ml/lost does not exist (used by a pvc:// URI)"),
    ("an image not allowed", {"compression": {"image": "evil.example/x:1"}}, "spec.compression.image"),
    ("a missing HTTPRoute", {"rollout": {"steps": [25, 50, 100], "trafficRouting": {"type": "gatewayAPI",
     "httpRoute": {"name": "web"}}}}, "HTTPRoute ml/web (spec.rollout.trafficRouting.httpRoute) does not exist"),
    ("a Prometheus not allowed", {"rollout": {"steps": [25, 50, 100], "analysis": {
     "prometheus": {"url": "http://elsewhere.example:9090"}, "errorRate": {"max": 0.01}}}},
     "spec.rollout.analysis.prometheus.url"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "says"), [p[1:] for p in PREFLIGHT], ids=[p[0] for p in PREFLIGHT])
def test_what_only_the_cluster_knows_makes_the_spec_invalid_before_any_child(
    harness: Harness, spec: dict[str, Any], says: str
) -> None:
    harness.create("digits", **spec)
    body = harness.reconcile("digits")
    invalid = conditions(body)["Invalid"]
    assert invalid["status"] == "True" and invalid["reason"] == "InvalidSpec" and says in invalid["message"]
    assert body["status"]["phase"] == "Failed" and body["status"]["message"].startswith("invalid: ")
    assert jobs() == [] and client.AppsV1Api().list_namespaced_deployment(NS).items == []
    assert [(e.type, e.reason) for e in harness.events] == [("Warning", "Invalid")]
    harness.reconcile("digits")
    assert len(harness.events) == 1  # the same problems again: no second Event


def test_a_pvc_created_later_makes_the_spec_valid_again(harness: Harness) -> None:
    harness.create("digits", baseModel={"uri": "pvc://late/model.onnx"})
    assert conditions(harness.reconcile("digits"))["Invalid"]["status"] == "True"
    pvc = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    client.CoreV1Api().create_namespaced_persistent_volume_claim(
        NS, {"metadata": {"name": "late"}, "spec": pvc}
    )
    body = harness.reconcile("digits")  # storage is checked again while the spec is Invalid
    assert "Invalid" not in conditions(body)
    assert body["status"]["phase"] == "Compressing" and len(jobs()) == 2


def test_a_spec_that_does_not_validate_names_the_field_and_a_fix_resumes(harness: Harness) -> None:
    # the local API server does not run the CRD's CEL rules: the operator's models refuse it too
    harness.create("digits", rollout={"steps": [25, 50, 100], "analysis": {"errorRate": {"max": 1}}})
    body = harness.reconcile("digits")
    invalid = conditions(body)["Invalid"]
    assert invalid["status"] == "True" and "spec.rollout.analysis" in invalid["message"]
    assert body["status"]["phase"] == "Failed" and jobs() == []
    harness.patch_spec("digits", {"rollout": {"analysis": {"errorRate": {"max": 0.01}}}})
    body = harness.reconcile("digits")
    assert "Invalid" not in conditions(body) and body["status"]["phase"] == "Compressing"
    assert sorted(j["metadata"]["labels"]["kondense.dev/variant"] for j in jobs()) == ["base", "fp16"]

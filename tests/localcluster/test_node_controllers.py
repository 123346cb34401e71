"""The local cluster's Deployment and Job controllers: status transitions, rolling updates, back-off
and deadlines, as pure plans over objects (no processes)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes_validate

from kondense.localcluster.controllers import TEMPLATE_HASH_LABEL, plan_deployment, plan_job, template_hash

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TS = "2026-01-01T12:00:00Z"


def deployment(replicas: int = 4, image: str = "a", surge: Any = 1, unavailable: Any = 0) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "ml", "uid": "d-uid", "generation": 3},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable},
            },
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": image, "command": ["kondense"]}]},
            },
        },
    }


def pod(
    name: str, template_of: dict[str, Any], ready: bool = True, phase: str = "Running", created: str = TS
) -> dict[str, Any]:
    labels = {"app": "web", TEMPLATE_HASH_LABEL: template_hash(template_of["spec"]["template"])}
    return {
        "metadata": {
            "name": name,
            "namespace": "ml",
            "uid": f"uid-{name}",
            "labels": labels,
            "creationTimestamp": created,
        },
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_a_new_deployment_gets_its_pods_and_reports_them_unavailable() -> None:
    d = deployment(replicas=3)
    plan = plan_deployment(d, [], TS)
    assert len(plan.create) == 3 and plan.delete == []
    created = plan.create[0]
    assert created["metadata"]["ownerReferences"][0]["uid"] == "d-uid"
    assert created["metadata"]["labels"][TEMPLATE_HASH_LABEL] == template_hash(d["spec"]["template"])
    assert created["spec"]["nodeName"]
    kubernetes_validate.validate(created, "1.33", strict=True)
    assert plan.status["observedGeneration"] == 3 and plan.status["readyReplicas"] == 0
    assert plan.status["unavailableReplicas"] == 3
    available = {c["type"]: c for c in plan.status["conditions"]}["Available"]
    assert available["status"] == "False"


def test_a_template_change_rolls_one_pod_at_a_time_never_below_the_desired_ready_count() -> None:
    old = deployment(image="a")
    new = deployment(image="b")
    pods = [pod(f"old-{i}", old) for i in range(4)]
    plan = plan_deployment(new, pods, TS)
    assert (len(plan.create), plan.delete) == (1, [])  # maxSurge 1, maxUnavailable 0
    surged = [*pods, pod("new-0", new, ready=False)]
    plan = plan_deployment(new, surged, TS)
    assert (plan.create, plan.delete) == ([], [])  # the new pod is not ready: nothing goes
    surged[-1] = pod("new-0", new, ready=True)
    plan = plan_deployment(new, surged, TS)
    assert len(plan.delete) == 1 and plan.delete[0].startswith("old-") and plan.create == []
    assert plan.status["updatedReplicas"] == 1 and plan.status["replicas"] == 4


def test_percentages_and_recreate() -> None:
    new = deployment(replicas=4, image="b", surge="25%", unavailable="25%")
    pods = [pod(f"old-{i}", deployment(image="a")) for i in range(4)]
    plan = plan_deployment(new, pods, TS)
    assert len(plan.create) == 1 and len(plan.delete) == 1  # 25% of 4: one more, one less
    recreate = deployment(image="b")
    recreate["spec"]["strategy"] = {"type": "Recreate"}
    plan = plan_deployment(recreate, pods, TS)
    assert len(plan.delete) == 4 and plan.create == []


def test_scaling_down_removes_not_ready_then_newest_and_zero_removes_all() -> None:
    d = deployment(replicas=2)
    pods = [
        pod("a", d, created="2026-01-01T10:00:00Z"),
        pod("b", d, created="2026-01-01T11:00:00Z"),
        pod("c", d, ready=False, created="2026-01-01T09:00:00Z"),
    ]
    assert plan_deployment(d, pods, TS).delete == ["c"]
    d["spec"]["replicas"] = 1
    assert plan_deployment(d, pods, TS).delete == ["c", "b"]
    d["spec"]["replicas"] = 0
    plan = plan_deployment(d, pods, TS)
    assert sorted(plan.delete) == ["a", "b", "c"]
    assert plan.status["replicas"] == 0 and plan.status["readyReplicas"] == 0


def test_a_settled_deployment_keeps_its_condition_times() -> None:
    d = deployment(replicas=1)
    pods = [pod("a", d)]
    first = plan_deployment(d, pods, TS)
    d["status"] = first.status
    second = plan_deployment(d, pods, "2026-01-01T13:00:00Z")
    assert second.status == first.status  # no write when nothing changed


def job(backoff_limit: int = 1, deadline: int | None = None, policy: str = "Never") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "backoffLimit": backoff_limit,
        "template": {
            "metadata": {"labels": {"app": "compress"}},
            "spec": {
                "restartPolicy": policy,
                "containers": [{"name": "c", "image": "x", "command": ["true"]}],
            },
        },
    }
    if deadline is not None:
        spec["activeDeadlineSeconds"] = deadline
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j", "namespace": "ml", "uid": "j-uid"},
        "spec": spec,
    }


def job_pod(name: str, phase: str, restarts: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}"},
        "status": {"phase": phase, "containerStatuses": [{"name": "c", "restartCount": restarts}]},
    }


def test_a_job_runs_one_pod_and_completes() -> None:
    j = job()
    plan = plan_job(j, [], NOW)
    assert len(plan.create) == 1
    created = plan.create[0]
    assert created["metadata"]["labels"]["job-name"] == "j"
    assert created["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] == "j-uid"
    kubernetes_validate.validate(created, "1.33", strict=True)
    assert plan.status["startTime"] == TS and plan.status["active"] == 1
    j["status"] = plan.status
    assert plan_job(j, [job_pod("p1", "Running")], NOW).create == []
    done = plan_job(j, [job_pod("p1", "Succeeded")], NOW + timedelta(seconds=5))
    conditions = {c["type"]: c["status"] for c in done.status["conditions"]}
    assert conditions == {"SuccessCriteriaMet": "True", "Complete": "True"}
    assert done.status["succeeded"] == 1 and done.status["active"] == 0 and done.status["completionTime"]
    body = {**j, "status": done.status}
    kubernetes_validate.validate(body, "1.33", strict=True)
    assert plan_job(body, [job_pod("p1", "Succeeded")], NOW).create == []  # finished stays finished


def test_failed_pods_are_replaced_until_the_backoff_limit() -> None:
    j = job(backoff_limit=1)
    j["status"] = {"startTime": TS}
    retry = plan_job(j, [job_pod("p1", "Failed")], NOW)
    assert len(retry.create) == 1 and retry.status["failed"] == 1
    failed = plan_job(j, [job_pod("p1", "Failed"), job_pod("p2", "Failed")], NOW)
    assert failed.create == []
    condition = {c["type"]: c for c in failed.status["conditions"]}["Failed"]
    assert condition["reason"] == "BackoffLimitExceeded" and failed.status["failed"] == 2


def test_restarts_in_place_count_as_failures_with_on_failure() -> None:
    j = job(backoff_limit=2, policy="OnFailure")
    j["status"] = {"startTime": TS}
    plan = plan_job(j, [job_pod("p1", "Running", restarts=3)], NOW)
    assert {c["type"]: c for c in plan.status["conditions"]}["Failed"]["reason"] == "BackoffLimitExceeded"
    assert plan.delete == ["p1"]


def test_the_active_deadline_ends_the_job_and_its_pods() -> None:
    j = job(deadline=60)
    j["status"] = {"startTime": TS}
    assert plan_job(j, [job_pod("p1", "Running")], NOW + timedelta(seconds=59)).delete == []
    late = plan_job(copy.deepcopy(j), [job_pod("p1", "Running")], NOW + timedelta(seconds=61))
    assert late.delete == ["p1"]
    assert {c["type"]: c for c in late.status["conditions"]}["Failed"]["reason"] == "DeadlineExceeded"

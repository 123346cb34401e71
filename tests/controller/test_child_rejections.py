# mypy: disable-error-code="union-attr, index, attr-defined, unused-ignore, arg-type, call-overload, operator, dict-item"
"""A 4xx from the API server on a child object becomes a condition on the CompressedModel and a phase
that says so, never a silent retry loop with the error only in the log. The real controller shell
(in-process) against the embedded local API server; the refusals are injected with kmock's DSL as
the real API server would send them (a Status body with reason and message)."""

from __future__ import annotations

import copy

import kmock
from kubernetes import client
from prometheus_client import REGISTRY

from kondense.operator.kube import KubeClient
from kondense_testing.inprocess import (
    GROUP,
    NS,
    PLURAL,
    VERSION,
    Harness,
    complete_jobs,
    conditions,
    status_body,
)


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

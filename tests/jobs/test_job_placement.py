"""Compression Jobs run on the serving pods' class of node unless the spec says otherwise (issue 10).

int8 accuracy and speed depend on the CPU (VNNI, AMX): a variant measured on another node class than
the one that serves it is measured on the wrong hardware. Pure tests on the Job builder.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kubernetes_validate
import pytest
from pydantic import ValidationError

from kondense.api.resource import CompressedModelSpec, CompressedModelStatus
from kondense.operator.objects import Owner, compression_job
from kondense.operator.rollout import BASE, JobObservation, JobState, World, reconcile
from kondense.operator.settings import OperatorSettings
from kondense_testing.builders import digits_body, job_result

OWNER = Owner("digits", "ml", "7b9e1c1e-0000-4000-8000-000000000001")
AMX = {"node.kubernetes.io/instance-type": "c7i.2xlarge"}
GPU_TAINT = [{"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"}]
AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "cpu-feature/amx", "operator": "In", "values": ["true"]}]}
            ]
        }
    }
}


def spec_with(serving: dict[str, Any], compression: dict[str, Any] | None = None) -> CompressedModelSpec:
    body = digits_body()["spec"]
    body["serving"] = {**body.get("serving", {}), **serving}
    if compression is not None:
        body["compression"] = {**body.get("compression", {}), **compression}
    return CompressedModelSpec.model_validate(body)


def pod_of(spec: CompressedModelSpec, variant: str = "int8") -> dict[str, Any]:
    job = compression_job(spec, OWNER, OperatorSettings(), "0123456789ab", variant)
    kubernetes_validate.validate(job, "1.33", strict=True)
    pod: dict[str, Any] = job["spec"]["template"]["spec"]
    return pod


@pytest.mark.parametrize("variant", [BASE, "int8"])
def test_jobs_reuse_the_serving_placement_by_default(variant: str) -> None:
    spec = spec_with({"nodeSelector": AMX, "tolerations": GPU_TAINT, "affinity": AFFINITY})
    pod = pod_of(spec, variant)
    assert pod["nodeSelector"] == AMX
    assert pod["tolerations"] == GPU_TAINT
    assert pod["affinity"] == AFFINITY


def test_each_field_set_under_compression_overrides_only_itself() -> None:
    own = {"pool": "batch"}
    spec = spec_with({"nodeSelector": AMX, "tolerations": GPU_TAINT}, {"nodeSelector": own})
    pod = pod_of(spec)
    assert pod["nodeSelector"] == own
    assert pod["tolerations"] == GPU_TAINT  # not set under compression: still the serving one


def test_an_empty_value_under_compression_means_none() -> None:
    spec = spec_with({"nodeSelector": AMX, "tolerations": GPU_TAINT}, {"nodeSelector": {}})
    pod = pod_of(spec)
    assert "nodeSelector" not in pod
    assert pod["tolerations"] == GPU_TAINT


def test_opting_out_uses_only_the_compression_placement() -> None:
    spec = spec_with({"nodeSelector": AMX, "affinity": AFFINITY}, {"sameNodesAsServing": False})
    pod = pod_of(spec)
    assert "nodeSelector" not in pod and "affinity" not in pod and "tolerations" not in pod


def test_resources_are_never_copied_from_serving() -> None:
    spec = spec_with({"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}, "nodeSelector": AMX})
    job = compression_job(spec, OWNER, OperatorSettings(), "0123456789ab", "int8")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container.get("resources") != {"limits": {"cpu": "1", "memory": "1Gi"}}


@pytest.mark.parametrize("where", ["serving", "compression"])
def test_an_affinity_with_unknown_fields_is_refused_in_one_sentence(where: str) -> None:
    body = digits_body()["spec"]
    body[where] = {**body.get(where, {}), "affinity": {"nodeAfinity": {}}}
    with pytest.raises(ValidationError) as caught:
        CompressedModelSpec.model_validate(body)
    assert "nodeAfinity" in str(caught.value) and "nodeAffinity" in str(caught.value)


def test_the_variant_status_shows_the_hardware_it_was_evaluated_on() -> None:
    spec = spec_with({"nodeSelector": AMX})
    jobs = {BASE: JobObservation(JobState.SUCCEEDED, result=job_result(BASE, size=1.0))}
    for target in spec.targets:
        jobs[target.name] = JobObservation(JobState.SUCCEEDED, result=job_result(target.name, size=0.3))
    now = datetime(2026, 12, 2, tzinfo=UTC)
    status = reconcile(spec, CompressedModelStatus(), 1, World(), now).status
    status = reconcile(spec, status, 1, World(jobs=jobs), now).status
    hardware = {v.name: v.hardware for v in status.variants}
    assert hardware and all(h and "int8" in h for h in hardware.values())

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
from kondense.operator.rollout import BASE, JobObservation, JobState, World, compression_hash, reconcile
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


def _run_of(spec: CompressedModelSpec, before: CompressedModelStatus | None = None) -> CompressedModelStatus:
    now = datetime(2026, 12, 2, tzinfo=UTC)
    return reconcile(spec, before or CompressedModelStatus(), 1, World(), now).status


@pytest.mark.parametrize(
    "change",
    [{"nodeSelector": AMX}, {"tolerations": GPU_TAINT}, {"affinity": AFFINITY}],
    ids=["nodeSelector", "tolerations", "affinity"],
)
def test_a_serving_placement_the_jobs_inherit_starts_a_new_run(change: dict[str, Any]) -> None:
    before = spec_with({})
    after = spec_with(change)
    assert compression_hash(after) != compression_hash(before)
    first = _run_of(before)
    second = _run_of(after, first)
    assert second.hashes.run != first.hashes.run  # new Jobs on the new node class
    assert second.hashes.compression == compression_hash(after)


@pytest.mark.parametrize("field", ["nodeSelector", "tolerations", "affinity"])
def test_serving_placement_does_not_count_where_the_jobs_do_not_inherit_it(field: str) -> None:
    values = {"nodeSelector": AMX, "tolerations": GPU_TAINT, "affinity": AFFINITY}
    own = {"nodeSelector": {"pool": "batch"}, "tolerations": [], "affinity": {}}[field]
    # opted out: serving placement does not place the Jobs
    opted_out = spec_with({}, {"sameNodesAsServing": False})
    assert compression_hash(spec_with({field: values[field]}, {"sameNodesAsServing": False})) == (
        compression_hash(opted_out)
    )
    # the field set under compression wins: the serving one is not the Jobs' placement
    pinned = spec_with({}, {field: own})
    assert compression_hash(spec_with({field: values[field]}, {field: own})) == compression_hash(pinned)
    first = _run_of(pinned)
    assert _run_of(spec_with({field: values[field]}, {field: own}), first).hashes.run == first.hashes.run


def test_a_placement_that_places_nothing_hashes_as_none() -> None:
    # an empty serving value places nothing: same Jobs, same run as no value (and as before this field
    # counted: specs without serving placement keep their hash across the operator upgrade)
    assert compression_hash(spec_with({"nodeSelector": {}, "tolerations": []})) == compression_hash(
        spec_with({})
    )

"""Every object the operator writes validates against the official Kubernetes schemas."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kondense.api.resource import CompressedModelSpec, CompressedModelStatus
from kondense.operator.backends import SERVING_BACKENDS, OnnxRuntimeBackend, ServingContext, TritonBackend
from kondense.operator.objects import Owner, compression_job
from kondense.operator.rollout import BASE, JobObservation, JobState, World, reconcile, topology
from kondense.operator.routers import TRAFFIC_ROUTERS
from kondense.operator.settings import OperatorSettings
from kondense.operator.workloads import serving_plan
from kondense_testing.builders import digits_spec, job_result
from kondense_testing.paths import EXAMPLES

K8S = "1.33"
OWNER = Owner("digits", "ml", "7b9e1c1e-0000-4000-8000-000000000001")
SETTINGS = OperatorSettings()


def validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S, strict=True)


def spec_of(example: str) -> CompressedModelSpec:
    return CompressedModelSpec.model_validate(
        yaml.safe_load((EXAMPLES / example / "compressedmodel.yaml").read_text())["spec"]
    )


def canary_status(spec: CompressedModelSpec) -> CompressedModelStatus:
    jobs = {BASE: JobObservation(JobState.SUCCEEDED, result=job_result(BASE, size=1.0))}
    for t in spec.targets:
        result = job_result(t.name, delta=0.0, size=0.3)
        assert result.artifact is not None
        result.artifact.uri = f"pvc://models/kondense/ml/digits/abc/{t.name}"
        jobs[t.name] = JobObservation(JobState.SUCCEEDED, result=result)
    jobs[BASE].result.artifact.uri = "pvc://models/kondense/ml/digits/abc/base"  # type: ignore[union-attr]
    now = datetime(2026, 11, 22, tzinfo=UTC)
    status = reconcile(spec, CompressedModelStatus(), 1, World(), now).status
    return reconcile(spec, status, 1, World(jobs=jobs), now).status


@pytest.mark.parametrize("variant", [BASE, "int8", "slim-int8"])
def test_compression_jobs_validate_and_carry_what_the_issue_asks(variant: str) -> None:
    spec = digits_spec()
    job = compression_job(spec, OWNER, SETTINGS, "0123456789ab", variant)
    validate(job)
    labels = job["metadata"]["labels"]
    assert labels["kondense.dev/model"] == "digits" and labels["kondense.dev/variant"] == variant
    assert labels["app.kubernetes.io/managed-by"] == "kondense"
    assert job["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["backoffLimit"] == 1 and job["spec"]["activeDeadlineSeconds"] == 1800
    container = pod["containers"][0]
    assert container["resources"]["limits"]["memory"] == "2Gi"
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    # pvc://models/... is mounted from the claim `models`, the output dir writable
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}  # fmt: skip
    assert claims == {"models": False}
    args = container["args"]
    assert args[args.index("--output") + 1].startswith("pvc://models/digits/kondense/ml/digits/0123456789ab/")
    if variant == BASE:
        assert "--baseline" in args
    else:
        assert f'"name": "{variant}"' in args[args.index("--target") + 1]


def test_job_names_fit_kubernetes_limits() -> None:
    long_owner = Owner("m" * 63, "ml", OWNER.uid)
    job = compression_job(digits_spec(), long_owner, SETTINGS, "f" * 12, "slim-int8")
    assert len(job["metadata"]["name"]) <= 63
    validate(job)


@pytest.mark.parametrize("example", ["digits", "minilm", "digits-triton"])
def test_serving_objects_validate(example: str) -> None:
    spec = spec_of(example)
    status = canary_status(spec)
    router = TRAFFIC_ROUTERS[spec.rollout.trafficRouting.type]
    backend = SERVING_BACKENDS[spec.serving.runtime]
    plan = serving_plan(
        ServingContext(spec, OWNER, SETTINGS), topology(spec, status, router.split), backend, router
    )
    kinds = [o["kind"] for o in plan.apply]
    assert kinds.count("Deployment") == 2 and kinds.count("Service") == 3
    assert kinds.count("Job") == (1 if spec.rollout.analysis.loadTest else 0)
    for obj in plan.apply:
        if obj["kind"] == "HTTPRoute":
            refs = obj["spec"]["rules"][0]["backendRefs"]
            assert [r["weight"] for r in refs] == [100 - spec.rollout.steps[0], spec.rollout.steps[0]]
            continue
        validate(obj)
    deployments = {o["metadata"]["name"]: o for o in plan.apply if o["kind"] == "Deployment"}
    canary = deployments[f"{OWNER.name}-canary"]
    template = canary["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert template["metadata"]["labels"]["kondense.dev/track"] == "canary"
    if isinstance(backend, OnnxRuntimeBackend):
        args = template["spec"]["containers"][0]["args"]
        assert args[args.index("--shadow-of") + 1] == f"http://{OWNER.name}-stable.ml.svc.cluster.local:8080"
    if isinstance(backend, TritonBackend):
        init = template["spec"]["initContainers"][0]["args"]
        assert init[0] == "triton-repository" and "--max-batch-size" in init
        assert "--metrics-config=summary_latencies=true" in template["spec"]["containers"][0]["args"]


def _serving_objects(spec: CompressedModelSpec) -> list[dict[str, Any]]:
    router = TRAFFIC_ROUTERS[spec.rollout.trafficRouting.type]
    backend = SERVING_BACKENDS[spec.serving.runtime]
    plan = serving_plan(
        ServingContext(spec, OWNER, SETTINGS),
        topology(spec, canary_status(spec), router.split),
        backend,
        router,
    )
    return plan.apply


@pytest.mark.parametrize("example", ["digits", "digits-triton"])
def test_services_expose_rest_and_grpc_on_named_container_ports(example: str) -> None:
    objects = _serving_objects(spec_of(example))
    services = [o for o in objects if o["kind"] == "Service"]
    assert len(services) == 3
    for svc in services:
        ports = {p["name"]: p for p in svc["spec"]["ports"]}
        assert ports["http"]["targetPort"] == "http" and ports["grpc"]["targetPort"] == "grpc"
        assert ports["grpc"]["port"] == ports["http"]["port"] + 1 == 8081
        validate(svc)
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        named = {p["name"] for p in container["ports"]}
        assert {"http", "grpc"} <= named
        if example == "digits":
            args = container["args"]
            grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
            assert args[args.index("--grpc-port") + 1] == str(grpc_port) == "8081"


@pytest.mark.parametrize(
    ("threads", "resources", "expected"),
    [
        (None, {"limits": {"cpu": "4"}, "requests": {"cpu": "1"}}, "4"),
        (None, {"limits": {"cpu": "1500m"}}, "1"),
        (None, {"requests": {"cpu": "2"}}, "2"),
        (None, {"limits": {"cpu": "250m"}}, "1"),
        (3, {"limits": {"cpu": "8"}}, "3"),
        (None, {"limits": {"memory": "1Gi"}}, None),
        (None, None, None),
    ],
)
def test_server_threads_follow_the_pods_cpu(
    threads: int | None, resources: dict[str, Any] | None, expected: str | None
) -> None:
    raw = spec_of("digits").model_dump(mode="json", exclude_none=True)
    raw["serving"].pop("threads", None)
    raw["serving"].pop("resources", None)
    if threads is not None:
        raw["serving"]["threads"] = threads
    if resources is not None:
        raw["serving"]["resources"] = resources
    spec = CompressedModelSpec.model_validate(raw)
    for deployment in (o for o in _serving_objects(spec) if o["kind"] == "Deployment"):
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        got = args[args.index("--threads") + 1] if "--threads" in args else None
        assert got == expected
        validate(deployment)


def test_settings_namespaces_are_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KONDENSE_NAMESPACES", "ml, team-b")
    assert OperatorSettings().namespaces == ["ml", "team-b"]
    monkeypatch.setenv("KONDENSE_NAMESPACES", "")
    assert OperatorSettings().namespaces == []


def test_status_merge_patch_removes_what_is_gone() -> None:
    from kondense.operator.controller import merge_patch

    old = {"phase": "Canary", "canary": {"weight": 25, "p99Ms": 4.0}, "selectedVariant": "int8"}
    new = {"phase": "RolledBack", "canary": {"weight": 0}}
    assert merge_patch(old, new) == {
        "phase": "RolledBack",
        "canary": {"weight": 0, "p99Ms": None},
        "selectedVariant": None,
    }
    assert merge_patch(new, new) == {}


def test_rollback_sets_the_route_weight_to_zero_before_the_canary_scales_down() -> None:
    # Gateway API weights are independent of pods: scaling the canary down while the route still sends
    # it traffic would starve that share. The plan is applied in order.
    from kondense.api.resource import Phase

    spec = spec_of("minilm")
    status = canary_status(spec)
    router = TRAFFIC_ROUTERS[spec.rollout.trafficRouting.type]
    backend = SERVING_BACKENDS[spec.serving.runtime]
    ctx = ServingContext(spec, OWNER, SETTINGS)
    stepping = [
        o["kind"] for o in serving_plan(ctx, topology(spec, status, router.split), backend, router).apply
    ]
    assert stepping.index("HTTPRoute") > stepping.index("Deployment")  # pods first when traffic grows
    status.phase = Phase.ROLLED_BACK
    plan = serving_plan(ctx, topology(spec, status, router.split), backend, router)
    kinds = [o["kind"] for o in plan.apply]
    assert kinds[0] == "HTTPRoute"
    assert [r["weight"] for r in plan.apply[0]["spec"]["rules"][0]["backendRefs"]] == [100, 0]
    assert ("Deployment", f"{OWNER.name}-canary") in plan.delete

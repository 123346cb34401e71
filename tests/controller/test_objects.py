"""Every object the operator writes validates against the official Kubernetes schemas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

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
    # pvc://models/... comes from the claim `models`: read-only but for the Job's own directory
    job_dir = f"digits/kondense/ml/digits/0123456789ab/{variant}"
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"models"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/mnt/pvc/models"]["readOnly"] is True  # the inputs beside the output
    assert mounts["/output"] == {
        "name": "output",
        "mountPath": "/output",
        "subPath": job_dir,
        "readOnly": False,
    }
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    assert sorted(writable) == ["/output", "/tmp"]
    # a subPath the kubelet creates belongs to root: an init container creates it as the Job's user
    (init,) = pod["initContainers"]
    assert init["command"] == ["mkdir"] and init["args"] == ["-p", "--", f"/mnt/pvc/models/{job_dir}"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert tmp["emptyDir"]["sizeLimit"] == SETTINGS.job_tmp_size_limit
    args = container["args"]
    assert args[args.index("--output") + 1] == f"pvc://models/{job_dir}/artifact"
    assert args[args.index("--output-dir") + 1] == "/output/artifact"
    assert "--model-sha256" not in args  # the spec pins nothing
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


@pytest.mark.parametrize(
    ("workers", "threads", "resources", "expected"),
    [
        (2, None, {"limits": {"cpu": "4"}}, ("2", "2")),  # each worker its share of the pod's CPUs
        (3, None, {"limits": {"cpu": "4"}}, ("3", "1")),
        (2, None, {"limits": {"cpu": "1"}}, ("2", "1")),  # at least one thread each
        (2, 3, {"limits": {"cpu": "8"}}, ("2", "3")),  # threads as given, per worker
        (2, None, None, ("2", None)),  # the server shares out its cgroup's CPUs itself
        (1, None, {"limits": {"cpu": "4"}}, (None, "4")),  # one worker: no flag
        (None, None, {"limits": {"cpu": "4"}}, (None, "4")),
    ],
)
def test_server_workers_share_the_pods_cpus(
    workers: int | None,
    threads: int | None,
    resources: dict[str, Any] | None,
    expected: tuple[str | None, str | None],
) -> None:
    raw = spec_of("digits").model_dump(mode="json", exclude_none=True)
    for key in ("threads", "resources", "workers"):
        raw["serving"].pop(key, None)
    for key, value in (("workers", workers), ("threads", threads), ("resources", resources)):
        if value is not None:
            raw["serving"][key] = value
    spec = CompressedModelSpec.model_validate(raw)
    deployments = [o for o in _serving_objects(spec) if o["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        got = tuple(
            args[args.index(flag) + 1] if flag in args else None for flag in ("--workers", "--threads")
        )
        assert got == expected
        validate(deployment)


def test_workers_are_refused_for_triton() -> None:
    raw = spec_of("digits-triton").model_dump(mode="json", exclude_none=True)
    raw["serving"]["workers"] = 2
    with pytest.raises(ValidationError, match="workers: server processes are kondense serve's"):
        CompressedModelSpec.model_validate(raw)


@pytest.mark.parametrize(
    ("resources", "spins"),
    [
        ({"limits": {"cpu": "2", "memory": "1Gi"}}, True),  # requests default to limits: Guaranteed
        ({"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "2", "memory": "1Gi"}}, True),
        ({"limits": {"cpu": "2000m", "memory": "1Gi"}, "requests": {"cpu": "2", "memory": "1024Mi"}}, True),
        ({"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}, False),
        ({"limits": {"cpu": "1500m", "memory": "1Gi"}}, False),  # not whole CPUs
        ({"limits": {"cpu": "2"}}, False),  # no memory limit: not Guaranteed
        ({"requests": {"cpu": "2", "memory": "1Gi"}}, False),  # no limits: shared CPUs
        (None, False),
    ],
)
def test_threads_spin_only_on_whole_dedicated_cpus(resources: dict[str, Any] | None, spins: bool) -> None:
    """ONNX Runtime threads spin (``--spin-wait``) only in pods the static CPU manager gives whole cores
    of their own (Guaranteed QoS, integer CPU); on shared or quota-limited CPUs spinning is far slower."""
    raw = spec_of("digits").model_dump(mode="json", exclude_none=True)
    raw["serving"].pop("resources", None)
    if resources is not None:
        raw["serving"]["resources"] = resources
    spec = CompressedModelSpec.model_validate(raw)
    deployments = [o for o in _serving_objects(spec) if o["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert ("--spin-wait" in args) is spins


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


# ---- issue 11: what a CompressedModel can make the operator run and write ----------------------------


def serving_objects(spec: CompressedModelSpec, settings: OperatorSettings = SETTINGS) -> list[dict[str, Any]]:
    status = canary_status(spec)
    router = TRAFFIC_ROUTERS[spec.rollout.trafficRouting.type]
    backend = SERVING_BACKENDS[spec.serving.runtime]
    ctx = ServingContext(spec, OWNER, settings)
    plan = serving_plan(ctx, topology(spec, status, router.split), backend, router)
    return plan.apply


@pytest.mark.parametrize("example", ["digits", "digits-triton"])
def test_every_consumer_gets_the_digest_the_operator_recorded(example: str) -> None:
    spec = spec_of(example)
    status = canary_status(spec)
    assert status.stable is not None and status.stable.artifact is not None
    canary = next(v for v in status.variants if status.canary and v.name == status.canary.variant)
    assert canary.artifact is not None
    expected = {"stable": status.stable.artifact.sha256, "canary": canary.artifact.sha256}
    assert expected["stable"] != expected["canary"]
    for obj in serving_objects(spec):
        if obj["kind"] != "Deployment":
            continue
        track = obj["metadata"]["labels"]["kondense.dev/track"]
        pod = obj["spec"]["template"]["spec"]
        consumer = pod["initContainers"][0] if spec.serving.runtime == "triton" else pod["containers"][0]
        args = consumer["args"]
        assert args[args.index("--expected-sha256") + 1] == expected[track], (track, args)
        tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
        assert tmp["emptyDir"]["sizeLimit"] == SETTINGS.pod_tmp_size_limit
        validate(obj)


def test_a_pinned_base_model_reaches_every_compression_job() -> None:
    pin = "ab" * 32
    spec = digits_spec(baseModel={"uri": "pvc://models/digits/model.onnx", "sha256": pin})
    for variant in [BASE, "int8"]:
        job = compression_job(spec, OWNER, SETTINGS, "0123456789ab", variant)
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--model-sha256") + 1] == pin
        validate(job)


def test_inputs_on_other_claims_are_mounted_read_only() -> None:
    spec = digits_spec(
        artifacts={"uri": "pvc://artifacts/team"},
        data={
            "evaluation": {"uri": "pvc://datasets/digits/eval.npz"},
            "calibration": {"uri": "pvc://datasets/digits/calib.npz"},
        },
    )
    job = compression_job(spec, OWNER, SETTINGS, "0123456789ab", "int8")
    validate(job)
    pod = job["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = pod["containers"][0]["volumeMounts"]
    by_claim = {
        volumes[m["name"]]["persistentVolumeClaim"]["claimName"] + ":" + m["mountPath"]: m.get("readOnly")
        for m in mounts
        if "persistentVolumeClaim" in volumes[m["name"]]
    }
    # models (base model) and datasets read-only; of artifacts only the Job's own directory, writable
    assert by_claim == {
        "models:/mnt/pvc/models": True,
        "datasets:/mnt/pvc/datasets": True,
        "artifacts:/output": False,
    }
    output = next(m for m in mounts if m["mountPath"] == "/output")
    assert output["subPath"] == "team/ml/digits/0123456789ab/int8"
    for name in ("pvc-0", "pvc-1"):
        assert volumes[name]["persistentVolumeClaim"]["readOnly"] is True


def test_a_location_that_climbs_out_of_its_directory_is_refused() -> None:
    from kondense.api.resource import ArtifactsSpec
    from kondense.operator.locations import LocationError

    # built past the models' own checks: the operator refuses it again before mounting anything
    climbing = ArtifactsSpec.model_construct(uri="pvc://models/../other")
    spec = digits_spec().model_copy(update={"artifacts": climbing})
    with pytest.raises(LocationError, match=r"'\.\.'"):
        compression_job(spec, OWNER, SETTINGS, "0123456789ab", "int8")


def test_image_overrides_only_from_the_allow_list() -> None:
    from kondense.operator.objects import ImageNotAllowed, image_problems

    spec = digits_spec(compression={"image": "evil/compress:1"}, serving={"image": "evil/serve:1"})
    problems = image_problems(spec, SETTINGS)
    assert len(problems) == 2
    assert problems[0].startswith(
        "spec.compression.image: image 'evil/compress:1' is not on the operator's allow-list"
    )
    assert problems[1].startswith("spec.serving.image: image 'evil/serve:1'")
    with pytest.raises(ImageNotAllowed):
        compression_job(spec, OWNER, SETTINGS, "0123456789ab", BASE)
    with pytest.raises(ImageNotAllowed):
        serving_objects(spec)
    # the default image named explicitly is no override
    same = digits_spec(compression={"image": SETTINGS.compression_image})
    assert image_problems(same, SETTINGS) == []
    allowing = OperatorSettings(allowed_images=["evil/compress:1", "evil/serve:1"])
    assert image_problems(spec, allowing) == []
    job = compression_job(spec, OWNER, allowing, "0123456789ab", BASE)
    pod = job["spec"]["template"]["spec"]
    assert {c["image"] for c in [*pod["initContainers"], *pod["containers"]]} == {"evil/compress:1"}
    images = {c["image"] for o in serving_objects(spec, allowing) if o["kind"] == "Deployment"
              for c in o["spec"]["template"]["spec"]["containers"]}  # fmt: skip
    assert images == {"evil/serve:1"}


def test_allowed_images_setting_is_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    assert OperatorSettings().allowed_images == []  # no overrides by default
    monkeypatch.setenv("KONDENSE_ALLOWED_IMAGES", "reg.example/kondense/compression:0.2, reg.example/serve:1")
    assert OperatorSettings().allowed_images == [
        "reg.example/kondense/compression:0.2",
        "reg.example/serve:1",
    ]


def test_a_spec_that_comes_back_is_a_new_run_in_a_new_directory() -> None:
    """A -> B -> A: the third run never writes into the directory the first one's stable serves."""
    from kondense.operator.locations import variant_location

    spec_a = digits_spec()
    spec_b = digits_spec(
        selection={"maxAccuracyDelta": 0.02}, targets=[{"name": "int8", "technique": "dynamic-int8"}]
    )
    status = CompressedModelStatus()
    runs = []
    for i, spec in enumerate([spec_a, spec_b, spec_a]):
        now = datetime(2026, 11, 22, 10, i, tzinfo=UTC)
        status = reconcile(spec, status, i + 1, World(), now).status
        assert status.hashes.run is not None
        runs.append(status.hashes.run)
        # restart safety: the same status gives the same run (its Jobs are found again)
        again = reconcile(spec, status, i + 1, World(), now + timedelta(seconds=5)).status
        assert again.hashes.run == status.hashes.run
    assert len(set(runs)) == 3
    first, third = (variant_location(spec_a, "ml", "digits", run, BASE).uri for run in (runs[0], runs[2]))
    assert first != third
    jobs = [compression_job(spec_a, OWNER, SETTINGS, run, BASE) for run in (runs[0], runs[2])]
    assert jobs[0]["metadata"]["name"] != jobs[1]["metadata"]["name"]
    subpaths = [
        next(
            m
            for m in j["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
            if m["mountPath"] == "/output"
        )["subPath"]
        for j in jobs
    ]
    assert subpaths[0] != subpaths[1]


def test_http_routes_are_only_this_namespace_s_and_only_opted_in() -> None:
    from kondense.operator.routers import GatewayAPIRouter, route_problems

    spec = spec_of("digits")
    gateway = digits_spec(rollout={"trafficRouting": {"type": "gatewayAPI", "httpRoute": {"name": "shop"}}})
    (route,) = [o for o in serving_objects(gateway) if o["kind"] == "HTTPRoute"]
    assert "namespace" not in route["metadata"]  # the controller puts it in the CR's namespace
    assert [o for o in serving_objects(spec) if o["kind"] == "HTTPRoute"] == []
    assert GatewayAPIRouter().objects is not None
    labelled = {"metadata": {"name": "shop", "labels": {"kondense.dev/canary-of": "digits"}}}
    assert route_problems(labelled, "ml", "shop", "digits") == []
    (missing,) = route_problems(None, "ml", "shop", "digits")
    assert "HTTPRoute ml/shop" in missing and "does not exist" in missing
    (unlabelled,) = route_problems({"metadata": {"name": "shop"}}, "ml", "shop", "digits")
    assert "label it kondense.dev/canary-of=digits" in unlabelled
    other = {"metadata": {"name": "shop", "labels": {"kondense.dev/canary-of": "payments"}}}
    (taken,) = route_problems(other, "ml", "shop", "digits")
    assert "'payments'" in taken


def test_http_route_namespace_is_refused_by_the_models() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="own namespace"):
        digits_spec(
            rollout={
                "trafficRouting": {
                    "type": "gatewayAPI",
                    "httpRoute": {"name": "shop", "namespace": "payments"},
                }
            }
        )


@pytest.mark.parametrize(
    ("router", "requested", "stable", "canary", "observed"),
    [
        ("replicas", 25, 3, 1, 25),
        ("replicas", 25, 4, 0, 0),
        ("gatewayAPI", 10, 4, 1, 10),
        ("gatewayAPI", 10, 4, 0, 0),
    ],
)
def test_each_router_says_which_weight_it_gives(
    router: str, requested: int, stable: int, canary: int, observed: int
) -> None:
    from kondense.api.resource import RouterType

    assert TRAFFIC_ROUTERS[RouterType(router)].observed_weight(requested, stable, canary) == observed


@pytest.mark.parametrize(("router", "weight"), [("replicas", 20), ("gatewayAPI", 25)])
def test_the_core_takes_the_observed_weight_from_the_router(router: str, weight: int) -> None:
    from kondense.api.resource import RouterType
    from kondense.operator.rollout import TrackObservation

    spec = spec_of("digits")  # first step 25 %
    status = canary_status(spec)
    assert status.canary is not None and status.canary.requestedWeight == 25
    track = TrackObservation(replicas=4, ready=4, updated=4, sha256=None, settled=True)
    world = World(
        stable=track,
        canary=TrackObservation(replicas=1, ready=1, updated=1, sha256=None, settled=True),
        observed_weight=TRAFFIC_ROUTERS[RouterType(router)].observed_weight,
    )
    after = reconcile(spec, status, 1, world, datetime(2026, 11, 22, 0, 0, 1, tzinfo=UTC)).status
    assert after.canary is not None and after.canary.weight == weight


@pytest.mark.parametrize("example", ["digits", "digits-triton"])
def test_a_server_sees_only_its_own_artifact_read_only(example: str) -> None:
    spec = spec_of(example)
    for obj in serving_objects(spec):
        if obj["kind"] != "Deployment":
            continue
        pod = obj["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert volume["persistentVolumeClaim"]["readOnly"] is True
        consumer = pod["initContainers"][0] if spec.serving.runtime == "triton" else pod["containers"][0]
        model_dir = consumer["args"][consumer["args"].index("--model") + 1]
        (mount,) = [m for m in consumer["volumeMounts"] if m["name"] == volume["name"]]
        assert model_dir.startswith("/mnt/pvc/models/kondense/ml/digits/abc/")
        assert mount == {
            "name": volume["name"],
            "mountPath": model_dir,
            "subPath": model_dir.removeprefix("/mnt/pvc/models/"),
            "readOnly": True,
        }


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

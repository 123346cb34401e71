"""Mirror first (issue 13): the phase rule as a table, then the state machine driven tick by tick
(pure, no I/O), and the objects it asks for (stable tees, the model's Service selects only stable, the
HTTPRoute's RequestMirror filter validated against the Gateway API CRD schema)."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from kondense.api.resource import (
    CanaryStatus,
    CompressedModelSpec,
    CompressedModelStatus,
    Phase,
    VariantPhase,
)
from kondense.api.validation import validate_object
from kondense.operator.analysis import SLI, Reading, Verdict
from kondense.operator.backends import SERVING_BACKENDS, ServingContext
from kondense.operator.rollout import MirrorStep, World, mirror_step, mirror_window, topology
from kondense.operator.routers import TRAFFIC_ROUTERS, GatewayAPIRouter, ReplicaRouter
from kondense.operator.workloads import serving_plan
from kondense_testing import crd_schema
from kondense_testing.builders import digits_body

from .test_bake import GOOD, Driver
from .test_objects import OWNER, SETTINGS, validate

MIN = 100
ROWS = [
    # verdict, duration elapsed, mirrored samples, expected
    pytest.param(Verdict.PASS, True, 500, MirrorStep.PASS, id="passed-after-duration-first-step"),
    pytest.param(Verdict.PASS, False, 500, MirrorStep.WAIT, id="passed-before-duration-waits"),
    pytest.param(Verdict.PASS, True, 99, MirrorStep.FAILED_CHECK, id="min-samples-not-reached"),
    pytest.param(Verdict.PASS, True, None, MirrorStep.FAILED_CHECK, id="no-sample-count"),
    pytest.param(Verdict.PASS, True, 100, MirrorStep.PASS, id="exactly-min-samples"),
    pytest.param(Verdict.FAIL, False, 500, MirrorStep.FAILED_CHECK, id="breach-counts-at-once"),
    pytest.param(Verdict.FAIL, True, 500, MirrorStep.FAILED_CHECK, id="breach-after-duration"),
    pytest.param(Verdict.ABORT, False, 500, MirrorStep.ROLL_BACK, id="severe-breach-rolls-back"),
    pytest.param(Verdict.NO_DATA, False, None, MirrorStep.WAIT, id="no-data-waits-for-duration"),
    pytest.param(Verdict.NO_DATA, True, None, MirrorStep.FAILED_CHECK, id="no-data-after-duration-fails"),
]


@pytest.mark.parametrize(("verdict", "elapsed", "samples", "expected"), ROWS)
def test_mirror_phase_rule(
    verdict: Verdict, elapsed: bool, samples: float | None, expected: MirrorStep
) -> None:
    assert mirror_step(verdict, elapsed, samples, MIN) is expected


# ---- the state machine -----------------------------------------------------------------------------

MIRRORED_DISAGREES = [*GOOD[:3], Reading(SLI.ACCURACY_DELTA, 0.05)]  # > max 0.02, < abortAt 0.2
NO_DATA = [Reading(SLI.REQUESTS, None, "no samples"), *GOOD[1:]]
FEW = [Reading(SLI.REQUESTS, 30), *GOOD[1:]]


def mirroring_driver(**mirror: Any) -> Driver:
    body = digits_body()
    body["spec"]["rollout"]["mirror"] = {"duration": "30s", "minSamples": MIN, **mirror}
    driver = Driver(CompressedModelSpec.model_validate(body["spec"]))
    driver.tick(World())
    driver.tick(World(jobs=driver.serving().jobs))
    assert driver.status.phase is Phase.MIRRORING
    driver.tick(driver.serving(), advance=1)  # the canary pods serve: the mirror clock starts
    assert live(driver).readyAt is not None and live(driver).mirror.since is not None  # type: ignore[union-attr]
    return driver


def live(driver: Driver) -> CanaryStatus:
    canary = driver.status.canary
    assert canary is not None
    return canary


def analyse(driver: Driver, readings: list[Reading]) -> None:
    driver.tick(replace(driver.serving(), readings=readings), advance=driver.interval())


def test_mirroring_serves_no_user_then_passes_into_the_first_step() -> None:
    driver = mirroring_driver()
    canary = driver.status.canary
    assert canary is not None and canary.variant == "int8"
    assert (canary.requestedWeight, canary.weight) == (0, 0)
    analyse(driver, GOOD)  # 10 s of 30 s: a pass waits
    assert driver.status.phase is Phase.MIRRORING and live(driver).requestedWeight == 0
    analyse(driver, GOOD)
    assert driver.status.phase is Phase.MIRRORING
    analyse(driver, GOOD)  # 30 s: passed, 500 mirrored requests >= 100
    status = driver.status
    assert status.phase is Phase.CANARY
    assert status.canary is not None and status.canary.mirror is not None
    assert status.canary.mirror.result == "Passed" and status.canary.mirror.samples == 500
    assert (status.canary.step, status.canary.requestedWeight) == (0, driver.spec.rollout.steps[0])


def test_a_mirror_breach_rolls_back_to_the_next_variant_which_mirrors_too() -> None:
    driver = mirroring_driver()
    analyse(driver, MIRRORED_DISAGREES)  # failure 1 of failureLimit 1: tolerated
    assert driver.status.phase is Phase.MIRRORING and live(driver).failedChecks == 1
    analyse(driver, MIRRORED_DISAGREES)
    status = driver.status
    int8 = next(v for v in status.variants if v.name == "int8")
    assert int8.phase is VariantPhase.ROLLED_BACK and int8.reason == "Breach"
    assert int8.message and int8.message.startswith("during mirroring (no user traffic)")
    assert any(c.sli == "accuracyDelta" and c.variant == "int8" and not c.passed for c in live(driver).checks)
    # the next variant starts mirroring: still no user traffic
    assert status.phase is Phase.MIRRORING and live(driver).variant != "int8"
    assert live(driver).requestedWeight == 0 and live(driver).mirror is not None


def test_no_data_waits_until_the_duration_then_fails_as_no_data() -> None:
    driver = mirroring_driver()
    analyse(driver, NO_DATA)
    analyse(driver, NO_DATA)
    assert driver.status.phase is Phase.MIRRORING and live(driver).failedChecks == 0
    analyse(driver, NO_DATA)  # 30 s: the wait is over, no data counts
    assert live(driver).failedChecks == 1
    analyse(driver, NO_DATA)
    int8 = next(v for v in driver.status.variants if v.name == "int8")
    assert int8.phase is VariantPhase.ROLLED_BACK and int8.reason == "NoData"


def test_the_clock_starts_when_copies_flow_and_a_stuck_stable_is_bounded() -> None:
    body = digits_body()
    body["spec"]["rollout"]["mirror"] = {"duration": "30s", "minSamples": MIN}
    driver = Driver(CompressedModelSpec.model_validate(body["spec"]))
    driver.tick(World())
    driver.tick(World(jobs=driver.serving().jobs))

    def rolling() -> World:  # the stable Deployment never settles on its mirroring settings
        world = driver.serving()
        assert world.stable is not None
        return replace(world, stable=replace(world.stable, settled=False))

    driver.tick(rolling(), advance=1)
    assert live(driver).readyAt is not None and live(driver).mirror.since is None  # type: ignore[union-attr]
    waited = 0.0
    while live(driver).variant == "int8" and waited < 600:
        driver.tick(replace(rolling(), readings=NO_DATA), advance=driver.interval())
        waited += driver.interval()
    int8 = next(v for v in driver.status.variants if v.name == "int8")
    assert int8.phase is VariantPhase.ROLLED_BACK and int8.reason == "NoData"
    assert waited >= 30 + 120  # the duration and the ready timeout first


def test_too_few_mirrored_requests_is_no_data_never_a_pass() -> None:
    driver = mirroring_driver()
    for _ in range(3):
        analyse(driver, FEW)  # every gate passes on 30 requests (minRequests 20), minSamples is 100
    status = driver.status
    assert status.phase is Phase.MIRRORING and live(driver).failedChecks == 1
    short = [c for c in live(driver).checks if c.sli == "mirrorSamples"]
    assert short and short[-1].value is None and short[-1].threshold == MIN
    assert "30 mirrored requests" in (short[-1].message or "")
    analyse(driver, FEW)
    int8 = next(v for v in driver.status.variants if v.name == "int8")
    assert int8.phase is VariantPhase.ROLLED_BACK and int8.reason == "NoData"


def test_the_mirror_window_covers_the_phase_up_to_its_duration() -> None:
    driver = mirroring_driver(duration="20s")
    analyse(driver, GOOD)
    assert mirror_window(driver.spec, driver.status, driver.now) == "10s"
    driver.now = driver.now.replace(minute=5)
    assert mirror_window(driver.spec, driver.status, driver.now) == "20s"


def test_abort_during_mirroring_returns_everything_to_stable() -> None:
    driver = mirroring_driver()
    driver.tick(replace(driver.serving(), intents=_intents({"kondense.dev/abort": "n1"})), advance=1)
    assert driver.status.phase is Phase.ROLLED_BACK


def _intents(annotations: dict[str, str]) -> Any:
    from kondense.api import intents

    return intents.parse(annotations)


# ---- the objects -------------------------------------------------------------------------------------


def _plan(spec: CompressedModelSpec, status: CompressedModelStatus) -> dict[str, dict[str, Any]]:
    status = status.model_copy(deep=True)  # where the operator records the Jobs' outputs
    for ref in [v.artifact for v in [status.base, *status.variants] if v] + [
        status.stable.artifact if status.stable else None
    ]:
        if ref is not None:
            ref.uri = f"pvc://models/kondense/ml/digits/abc/{ref.sha256[:8]}"
    router = TRAFFIC_ROUTERS[spec.rollout.trafficRouting.type]
    plan = serving_plan(
        ServingContext(spec, OWNER, SETTINGS),
        topology(spec, status, router.split),
        SERVING_BACKENDS[spec.serving.runtime],
        router,
    )
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in plan.apply}


def test_onnxruntime_stable_tees_while_the_models_service_selects_only_stable() -> None:
    driver = mirroring_driver(percentage=40)
    topo = topology(driver.spec, driver.status, ReplicaRouter().split)
    assert topo.weight == 0 and topo.mirror == 40
    assert topo.stable is not None and topo.stable.replicas == driver.spec.serving.replicas
    assert topo.canary is not None and topo.canary.replicas >= 1
    objects = _plan(driver.spec, driver.status)
    for obj in objects.values():
        validate(obj)
    args = objects["Deployment/digits-stable"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--mirror-to") + 1] == "http://digits-canary.ml.svc.cluster.local:8080"
    assert args[args.index("--mirror-sample") + 1] == "0.4"
    assert args[args.index("--mirror-variant") + 1] == "int8"
    assert objects["Service/digits"]["spec"]["selector"] == {
        "kondense.dev/model": "digits",
        "kondense.dev/track": "stable",
    }
    for _ in range(3):
        analyse(driver, GOOD)
    assert driver.status.phase is Phase.CANARY
    after = _plan(driver.spec, driver.status)
    args = after["Deployment/digits-stable"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--mirror-to" not in args
    assert after["Service/digits"]["spec"]["selector"] == {"kondense.dev/model": "digits"}


@cache
def httproute_schema() -> dict[str, Any]:
    path = Path(crd_schema.__file__).parent / "httproute_v1_schema.json"
    return json.loads(path.read_text())["openAPIV3Schema"]


def route_violations(route: dict[str, Any]) -> list[str]:
    """The HTTPRoute against the Gateway API v1.6.1 CRD's OpenAPI schema (standard channel), strict
    about unknown fields as `kubectl apply` is."""
    validator = crd_schema.OpenAPIValidator(crd_schema._strict(httproute_schema()))
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(route)]


def user_route() -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "shop", "namespace": "ml", "labels": {"kondense.dev/canary-of": "digits"}},
        "spec": {
            "parentRefs": [{"name": "gateway"}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                    "filters": [
                        {
                            "type": "RequestHeaderModifier",
                            "requestHeaderModifier": {"set": [{"name": "x-team", "value": "ml"}]},
                        }
                    ],
                    "backendRefs": [{"name": "digits-stable", "port": 8080}],
                }
            ],
        },
    }


class Routes:
    def __init__(self, route: dict[str, Any]) -> None:
        self.route = route

    def get_custom(self, *args: Any) -> dict[str, Any]:
        return copy.deepcopy(self.route)

    def patch_custom(self, group: str, version: str, plural: str, ns: str, name: str, body: Any) -> None:
        self.route["spec"].update(body["spec"])


def test_triton_mirrors_through_the_httproute_request_mirror_filter() -> None:
    spec = digits_body()["spec"]
    spec["serving"]["runtime"] = "triton"
    spec["rollout"].update(
        trafficRouting={"type": "gatewayAPI", "httpRoute": {"name": "shop"}},
        mirror={"duration": "30s", "percentage": 25},
    )
    spec["rollout"]["analysis"].pop("accuracyDelta", None)  # Triton cannot judge agreement
    driver = Driver(CompressedModelSpec.model_validate(spec))
    driver.tick(World())
    driver.tick(World(jobs=driver.serving().jobs))
    assert driver.status.phase is Phase.MIRRORING
    driver.tick(driver.serving(), advance=1)  # the canary pods serve
    objects = _plan(driver.spec, driver.status)
    route = objects["HTTPRoute/shop"]
    (rule,) = route["spec"]["rules"]
    assert [r["weight"] for r in rule["backendRefs"]] == [100, 0]  # no user request to the canary
    assert rule["filters"] == [
        {
            "type": "RequestMirror",
            "requestMirror": {"backendRef": {"name": "digits-canary", "port": 8080}, "percent": 25},
        }
    ]
    stable = objects["Deployment/digits-stable"]
    assert "--mirror-to" not in json.dumps(stable)  # Triton does not tee: the gateway copies
    # onto the user's route: their matches and filters kept, ours added, valid against the CRD schema
    api = Routes(user_route())
    assert GatewayAPIRouter().apply(api, "ml", "digits", route) == "patched"
    assert route_violations(api.route) == []
    filters = api.route["spec"]["rules"][0]["filters"]
    assert [f["type"] for f in filters] == ["RequestHeaderModifier", "RequestMirror"]
    assert GatewayAPIRouter().apply(api, "ml", "digits", route) == "unchanged"
    # after the mirror phase: our filter goes, theirs stays
    for _ in range(3):
        analyse(driver, GOOD[:3])
    assert driver.status.phase is Phase.CANARY
    stepped = _plan(driver.spec, driver.status)["HTTPRoute/shop"]
    assert "filters" not in stepped["spec"]["rules"][0]
    assert GatewayAPIRouter().apply(api, "ml", "digits", stepped) == "patched"
    assert [f["type"] for f in api.route["spec"]["rules"][0]["filters"]] == ["RequestHeaderModifier"]
    assert route_violations(api.route) == []


def test_the_schema_check_catches_a_bad_mirror_filter() -> None:
    route = user_route()
    route["spec"]["rules"][0]["filters"] = [
        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "x"}, "percent": 150}}
    ]
    assert any("percent" in v or "150" in v for v in route_violations(route))


@pytest.mark.parametrize(
    ("mirror", "rollout", "serving", "where"),
    [
        ({"duration": "10s"}, {"interval": "30s"}, {}, "spec.rollout.mirror.duration"),
        ({"duration": "2h"}, {}, {}, "spec.rollout.mirror.duration"),
        ({"percentage": 0}, {}, {}, "spec.rollout.mirror.percentage"),
        ({"minSamples": 0}, {}, {}, "spec.rollout.mirror.minSamples"),
        ({}, {}, {"runtime": "triton"}, "spec.rollout.mirror"),
    ],
)
def test_validate_says_what_is_wrong_with_a_mirror(
    mirror: dict[str, Any], rollout: dict[str, Any], serving: dict[str, Any], where: str
) -> None:
    body = digits_body()
    body["spec"]["rollout"].update(rollout, mirror=mirror)
    body["spec"]["rollout"]["analysis"].pop("accuracyDelta", None)
    body["spec"]["serving"].update(serving)
    _, errors = validate_object(body)
    problems = [str(e) for e in errors]
    assert problems and any(p.startswith(where) for p in problems), problems
    assert all("\n" not in p and "Traceback" not in p for p in problems)


def test_the_models_service_selects_canary_pods_again_after_mirroring(tmp_path: Path) -> None:
    """kube.apply owns a Service's selector whole: the track key it selected on during the mirror
    phase is removed afterwards (a merge patch alone would keep it, and the canary would never serve)."""
    from kubernetes import client, config

    from kondense.localcluster import LocalAPIServer
    from kondense.operator.kube import KubeClient
    from kondense.operator.objects import service

    with LocalAPIServer() as api:
        api_client = config.new_client_from_config(str(api.write_kubeconfig(tmp_path / "kubeconfig")))
        try:
            core = client.CoreV1Api(api_client)
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="ml")))
            kube = KubeClient(api_client)
            model = {"kondense.dev/model": "digits"}
            mirroring = service(OWNER, "digits", {**model, "kondense.dev/track": "stable"}, 8080, {})
            assert kube.apply(mirroring) == "created"
            assert kube.apply(service(OWNER, "digits", model, 8080, {})) == "patched"
            spec = core.read_namespaced_service("digits", "ml").spec
            assert spec is not None and spec.selector == model
            assert kube.apply(service(OWNER, "digits", model, 8080, {})) == "unchanged"
        finally:
            api_client.close()

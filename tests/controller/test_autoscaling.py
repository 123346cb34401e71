"""serving.autoscaling: HPAs for stable and canary, replicas left to them, analysis held while scaling."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes_validate
import pytest
from pydantic import ValidationError

from kondense.api.artifacts import ArtifactRef
from kondense.api.resource import Autoscaling, CompressedModelSpec, CompressedModelStatus, Phase, RouterType
from kondense.operator.analysis import SLI, Reading
from kondense.operator.backends import SERVING_BACKENDS, ServingContext
from kondense.operator.naming import AUTOSCALED_ANNOTATION
from kondense.operator.objects import Owner
from kondense.operator.rollout import (
    BASE,
    AnalysisDue,
    Decision,
    JobObservation,
    JobState,
    Topology,
    Track,
    TrackObservation,
    World,
    analysis_due,
    ready_timeout,
    reconcile,
    scaling_problem,
    topology,
)
from kondense.operator.routers import TRAFFIC_ROUTERS
from kondense.operator.settings import OperatorSettings
from kondense.operator.workloads import HPA, autoscaling_bounds, serving_plan
from kondense_testing.builders import digits_spec, job_result, sha

K8S = "1.33"
OWNER = Owner("digits", "ml", "7b9e1c1e-0000-4000-8000-000000000001")
SERVING = {
    "runtime": "onnxruntime",
    "replicas": 4,
    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
}
GATEWAY = {"type": "gatewayAPI", "httpRoute": {"name": "shop"}}
GOOD = [
    Reading(SLI.REQUESTS, 500),
    Reading(SLI.P99_LATENCY_MS, 4.0),
    Reading(SLI.ERROR_RATE, 0.0),
    Reading(SLI.ACCURACY_DELTA, 0.001),
]


def autoscaled(
    router: str = "replicas", low: int = 2, high: int = 10, cpu: int = 70, **rollout: Any
) -> CompressedModelSpec:
    routing = GATEWAY if router == "gatewayAPI" else {"type": "replicas"}
    spec = digits_spec(
        serving={
            **SERVING,
            "autoscaling": {"minReplicas": low, "maxReplicas": high, "targetCPUUtilization": cpu},
        }
    )
    update = {"trafficRouting": routing, **rollout}
    return spec.model_copy(
        update={"rollout": spec.rollout.model_validate({**spec.rollout.model_dump(), **update})}
    )


NOW = datetime(2026, 11, 22, tzinfo=UTC)


def canary_status(spec: CompressedModelSpec) -> CompressedModelStatus:
    """Variants compressed and selected: the canary of the best one just started."""
    jobs = {BASE: JobObservation(JobState.SUCCEEDED, result=job_result(BASE, size=1.0))}
    for target in spec.targets:
        result = job_result(target.name, delta=0.0, size=0.3)
        assert result.artifact is not None
        result.artifact.uri = f"pvc://models/kondense/ml/digits/abc/{target.name}"
        jobs[target.name] = JobObservation(JobState.SUCCEEDED, result=result)
    jobs[BASE].result.artifact.uri = "pvc://models/kondense/ml/digits/abc/base"  # type: ignore[union-attr]
    status = reconcile(spec, CompressedModelStatus(), 1, World(), NOW).status
    return reconcile(spec, status, 1, World(jobs=jobs), NOW).status


class Ticks:
    """The state machine fed tick by tick, as the shell does (readings only when an analysis is due)."""

    def __init__(self, spec: CompressedModelSpec) -> None:
        self.spec, self.status, self.now = spec, canary_status(spec), NOW
        assert self.status.phase is Phase.CANARY and self.status.canary is not None

    @property
    def canary(self) -> Any:
        assert self.status.canary is not None
        return self.status.canary

    def serving(self, stable: tuple[int, int] | None = None, canary: tuple[int, int] | None = None) -> World:
        """(desired, ready) per track; everything ready at the topology's counts by default."""
        topo = topology(self.spec, self.status, TRAFFIC_ROUTERS[self.spec.rollout.trafficRouting.type].split)
        assert topo.stable is not None and topo.canary is not None
        s_desired, s_ready = stable or (topo.stable.replicas, topo.stable.replicas)
        c_desired, c_ready = canary or (topo.canary.replicas, topo.canary.replicas)
        return World(
            stable=TrackObservation(s_desired, s_ready, s_ready, topo.stable.artifact.sha256, True, True),
            canary=TrackObservation(c_desired, c_ready, c_ready, topo.canary.artifact.sha256, True, True),
        )

    def tick(
        self, world: World, advance: float, readings: bool = True, values: list[Reading] = GOOD
    ) -> Decision:
        self.now += timedelta(seconds=advance)
        due = analysis_due(self.spec, self.status, world, self.now)
        if readings and due is not AnalysisDue.NONE:
            world = replace(world, readings=values, due=due)
        decision = reconcile(self.spec, self.status, 1, world, self.now)
        self.status = decision.status
        return decision


def track(replicas: int) -> Track:
    artifact = ArtifactRef(uri="pvc://models/kondense/ml/digits/abc/x", sha256=sha("x"), sizeBytes=1000)
    return Track(artifact, "int8", replicas)


# ---- the bounds each HPA gets --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("router", "low", "high", "weight", "promoting", "canary", "stable_bounds", "canary_bounds"),
    [
        # replicas router: the bounds split by the weight (the pod ratio is the weight)
        ("replicas", 4, 20, 25, False, 1, (3, 15), (1, 5)),
        ("replicas", 4, 20, 50, False, 2, (2, 10), (2, 10)),
        ("replicas", 2, 8, 10, False, 1, (1, 7), (1, 1)),
        ("replicas", 1, 1, 50, False, 1, (1, 1), (1, 1)),  # one pod: each serving track keeps one
        ("replicas", 4, 20, 25, True, 1, (4, 20), (1, 5)),  # promoting: stable whole again
        ("replicas", 4, 20, 0, False, None, (4, 20), None),  # no canary: stable whole, no canary HPA
        # Gateway API: the route carries the weight; stable keeps every bound, the canary its share
        ("gatewayAPI", 4, 20, 10, False, 1, (4, 20), (1, 2)),
        ("gatewayAPI", 4, 20, 50, False, 2, (4, 20), (2, 10)),
        ("gatewayAPI", 4, 20, 100, False, 4, (4, 20), (4, 20)),
    ],
)
def test_hpa_bounds_follow_the_router_split(
    router: str,
    low: int,
    high: int,
    weight: int,
    promoting: bool,
    canary: int | None,
    stable_bounds: tuple[int, int],
    canary_bounds: tuple[int, int] | None,
) -> None:
    topo = Topology(track(low), track(canary) if canary is not None else None, weight, promoting=promoting)
    split = TRAFFIC_ROUTERS[RouterType(router)].split
    bounds = autoscaling_bounds(Autoscaling(minReplicas=low, maxReplicas=high), split, topo)
    assert bounds == {"stable": stable_bounds, "canary": canary_bounds}


# ---- the objects ---------------------------------------------------------------------------------


def plan_for(spec: CompressedModelSpec, observed: Mapping[str, TrackObservation | None] | None = None) -> Any:
    router = TRAFFIC_ROUTERS[spec.rollout.trafficRouting.type]
    ctx = ServingContext(spec, OWNER, OperatorSettings())
    return serving_plan(
        ctx,
        topology(spec, canary_status(spec), router.split),
        SERVING_BACKENDS[spec.serving.runtime],
        router,
        observed,
    )


@pytest.mark.parametrize("router", ["replicas", "gatewayAPI"])
def test_every_hpa_validates_and_scales_its_own_deployment(router: str) -> None:
    plan = plan_for(autoscaled(router, cpu=65))
    hpas = [o for o in plan.apply if o["kind"] == HPA]
    deployments = {o["metadata"]["name"]: o for o in plan.apply if o["kind"] == "Deployment"}
    assert (
        sorted(h["metadata"]["name"] for h in hpas)
        == sorted(deployments)
        == ["digits-canary", "digits-stable"]
    )
    for hpa in hpas:
        kubernetes_validate.validate({**hpa, "metadata": {**hpa["metadata"]}}, K8S, strict=True)
        spec = hpa["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": hpa["metadata"]["name"],
        }
        assert spec["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 65}
        assert hpa["metadata"]["ownerReferences"][0]["kind"] == "CompressedModel"
        deployment = deployments[hpa["metadata"]["name"]]
        # created at the HPA's minimum, marked as the HPA's, and each HPA follows its Deployment
        assert deployment["spec"]["replicas"] == spec["minReplicas"]
        assert deployment["metadata"]["annotations"][AUTOSCALED_ANNOTATION] == "true"
        assert plan.apply.index(hpa) == plan.apply.index(deployment) + 1
        kubernetes_validate.validate(deployment, K8S, strict=True)


def observation(replicas: int, ready: int | None = None, autoscaled: bool = True) -> TrackObservation:
    ready = replicas if ready is None else ready
    return TrackObservation(replicas, ready, ready, None, ready == replicas, autoscaled)


@pytest.mark.parametrize(
    ("stable_now", "canary_now", "stable_applied", "canary_applied"),
    [
        (None, None, 1, 1),  # created at the minimum (first step 25 % of 2..10: stable 1..7, canary 1..3)
        (5, 2, "absent", "absent"),  # the HPA scaled within its bounds: the operator leaves replicas alone
        (9, 3, 7, "absent"),  # above stable's new maximum (the weight moved): clamped, as the HPA would
        (1, 0, "absent", 1),  # below the minimum: raised to it
    ],
)
def test_the_operator_never_undoes_what_the_hpa_decided(
    stable_now: int | None, canary_now: int | None, stable_applied: Any, canary_applied: Any
) -> None:
    spec = autoscaled(low=2, high=10)
    observed = {
        "stable": observation(stable_now) if stable_now is not None else None,
        "canary": observation(canary_now) if canary_now is not None else None,
    }
    plan = plan_for(spec, observed)
    deployments = {o["metadata"]["name"]: o for o in plan.apply if o["kind"] == "Deployment"}
    for name, applied in (("digits-stable", stable_applied), ("digits-canary", canary_applied)):
        assert deployments[name]["spec"].get("replicas", "absent") == applied


def test_switching_autoscaling_off_deletes_the_hpas_and_takes_replicas_back() -> None:
    plain = digits_spec(serving=SERVING)
    observed = {"stable": observation(7), "canary": observation(2)}
    plan = plan_for(plain, observed)
    assert [o for o in plan.apply if o["kind"] == HPA] == []
    assert sorted(name for kind, name in plan.delete if kind == HPA) == ["digits-canary", "digits-stable"]
    for deployment in (o for o in plan.apply if o["kind"] == "Deployment"):
        assert deployment["metadata"]["annotations"][AUTOSCALED_ANNOTATION] == "false"
        assert isinstance(deployment["spec"]["replicas"], int)
    # never autoscaled: nothing to delete, no marker (no extra calls for the common case)
    untouched = plan_for(plain, {"stable": observation(3, autoscaled=False), "canary": None})
    assert not [d for d in untouched.delete if d[0] == HPA]
    assert all(
        AUTOSCALED_ANNOTATION not in o["metadata"]["annotations"]
        for o in untouched.apply
        if o["kind"] == "Deployment"
    )


def test_a_finished_canary_takes_its_hpa_with_it() -> None:
    spec = autoscaled()
    router = TRAFFIC_ROUTERS[spec.rollout.trafficRouting.type]
    ctx = ServingContext(spec, OWNER, OperatorSettings())
    backend = SERVING_BACKENDS[spec.serving.runtime]
    stable_only = Topology(track(4), None, 0)
    gone = serving_plan(
        ctx, stable_only, backend, router, {"stable": observation(4), "canary": observation(1)}
    )
    assert (HPA, "digits-canary") in gone.delete and ("Deployment", "digits-canary") in gone.delete
    assert [o["metadata"]["name"] for o in gone.apply if o["kind"] == HPA] == ["digits-stable"]
    again = serving_plan(ctx, stable_only, backend, router, {"stable": observation(4), "canary": None})
    assert (HPA, "digits-canary") not in again.delete  # once: no call per tick for what is gone


@pytest.mark.parametrize(
    ("serving", "message"),
    [
        (
            {**SERVING, "resources": {"requests": {"memory": "1Gi"}}, "autoscaling": {"maxReplicas": 4}},
            "resources.requests.cpu is required",
        ),
        ({**SERVING, "autoscaling": {"minReplicas": 5, "maxReplicas": 4}}, "must not exceed maxReplicas"),
        (
            {**SERVING, "autoscaling": {"maxReplicas": 4, "targetCPUUtilization": 0}},
            "greater than or equal to 1",
        ),
    ],
)
def test_bad_autoscaling_is_refused_clearly(serving: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        digits_spec(serving=serving)


# ---- weights while the HPA scales ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("router", "requested", "stable_ready", "canary_ready", "observed"),
    [
        ("replicas", 25, 6, 2, 25),  # both scaled up in step: the ratio of ready pods holds
        ("replicas", 25, 6, 1, 14),  # canary's new pod not ready yet: the Service gives it less, truly
        ("replicas", 25, 3, 3, 50),  # reported as it is, never as requested
        ("gatewayAPI", 25, 6, 1, 25),  # route weights do not depend on pod counts
        ("gatewayAPI", 25, 20, 1, 25),
        ("gatewayAPI", 25, 5, 0, 0),  # no ready canary pod: it can take nothing
    ],
)
def test_weights_while_the_hpa_scales(
    router: str, requested: int, stable_ready: int, canary_ready: int, observed: int
) -> None:
    weight = TRAFFIC_ROUTERS[RouterType(router)].observed_weight
    assert weight(requested, stable_ready, canary_ready) == observed


# ---- the analysis holds while a track scales ----------------------------------------------------


@pytest.mark.parametrize(
    ("autoscaling", "stable", "canary", "problem"),
    [
        (True, (4, 4), (1, 1), None),
        (True, (6, 4), (1, 1), "stable is scaling (4/6 pods ready)"),
        (True, (4, 4), (3, 1), "canary is scaling (1/3 pods ready)"),
        (True, (3, 4), (1, 1), "stable is scaling (4/3 pods ready)"),  # scaling down: pods still going
        (False, (6, 4), (3, 1), None),  # no autoscaling: the ordinary rules (ready timeout) apply
    ],
)
def test_scaling_problem(
    autoscaling: bool, stable: tuple[int, int], canary: tuple[int, int], problem: str | None
) -> None:
    spec = autoscaled() if autoscaling else digits_spec()
    world = World(stable=observation(*stable), canary=observation(*canary))
    assert scaling_problem(spec, world) == problem


def test_the_analysis_holds_while_scaling_then_goes_on() -> None:
    ticks = Ticks(autoscaled())
    interval = ticks.spec.rollout.interval_seconds()
    ticks.tick(ticks.serving(), advance=1, readings=False)  # the canary serves: the analysis clock starts
    assert ticks.canary.readyAt is not None
    step = ticks.canary.step
    scaling = ticks.serving(stable=(5, 3))

    held = ticks.tick(scaling, advance=interval)
    assert held.analysis is None and ticks.canary.step == step and ticks.canary.failedChecks == 0
    (check,) = [c for c in ticks.canary.checks if c.sli == "scaling"]
    assert (
        check.held and check.passed and check.message == "analysis held: stable is scaling (3/5 pods ready)"
    )
    assert ticks.canary.scalingSince is not None and "analysis holds" in (ticks.status.message or "")

    ticks.tick(scaling, advance=1)  # between intervals: held too, no further check
    assert len([c for c in ticks.canary.checks if c.sli == "scaling"]) == 1

    done = ticks.tick(ticks.serving(), advance=interval)
    assert done.analysis is not None and ticks.canary.step == step + 1  # scaled: the analysis goes on
    assert ticks.canary.scalingSince is None


def test_a_track_that_never_finishes_scaling_is_judged_after_the_ready_timeout() -> None:
    ticks = Ticks(autoscaled())
    ticks.tick(ticks.serving(), advance=1, readings=False)
    stuck = ticks.serving(canary=(3, 1))
    assert ticks.tick(stuck, advance=ticks.spec.rollout.interval_seconds()).analysis is None
    assert ticks.canary.scalingSince is not None
    waited = ready_timeout(ticks.spec) + timedelta(seconds=1)
    judged = ticks.tick(stuck, advance=waited.total_seconds())
    assert judged.analysis is not None  # held long enough: the analysis gives a verdict again


@pytest.mark.parametrize("advance", [1.0, 10.0])  # between intervals (continuous) and at the interval
def test_an_abort_never_waits_for_scaling(advance: float) -> None:
    ticks = Ticks(autoscaled())
    ticks.tick(ticks.serving(), advance=1, readings=False)
    gate = ticks.spec.rollout.analysis.p99LatencyMs
    assert gate is not None
    awful = [*GOOD[:1], Reading(SLI.P99_LATENCY_MS, gate.abort_at() * 2), *GOOD[2:]]
    first = ticks.canary.variant
    decision = ticks.tick(ticks.serving(stable=(5, 3)), advance=advance, values=awful)
    assert decision.analysis is not None and decision.analysis.verdict == "abort"
    (variant,) = [v for v in ticks.status.variants if v.name == first]
    assert (variant.phase, variant.reason) == ("RolledBack", "Abort")

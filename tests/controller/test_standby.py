"""Instant revert (issue 13): during a bake the previous stable artifact stays warm in a standby
Deployment no Service selects; a revert points the Services at its ready pods in the same reconcile,
the stable Deployment rolls back behind them, and once stable is settled the Services return to it and
the standby goes. Pure: the state machine tick by tick, and the serving plan it leads to."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import kubernetes_validate
import pytest

from kondense.api.resource import CompressedModelSpec, Phase
from kondense.operator.backends import SERVING_BACKENDS, ServingContext
from kondense.operator.naming import MODEL_LABEL
from kondense.operator.objects import Owner
from kondense.operator.rollout import BASE, Topology, Track, TrackObservation, ready_timeout, topology
from kondense.operator.routers import TRAFFIC_ROUTERS, ReplicaRouter
from kondense.operator.settings import OperatorSettings
from kondense.operator.workloads import ServingPlan, serving_plan
from kondense_testing.builders import digits_body, digits_spec, sha
from kondense_testing.rollouts import GOOD

from .test_bake import BAKE_GOOD, BAKE_SLOW, Driver, baking_driver

OWNER = Owner("digits", "ml", "7b9e1c1e-0000-4000-8000-000000000001")


def standby_seen(driver: Driver, ready: bool = True, artifact: str = BASE) -> TrackObservation:
    n = driver.spec.serving.replicas
    return TrackObservation(n, n if ready else 0, n, sha(artifact), ready)


def located(topo: Topology) -> Topology:
    """The builders' artifacts have no location; a serving plan needs one (pvc://, by sha)."""

    def at(track: Track | None) -> Track | None:
        if track is None:
            return None
        where = track.artifact.model_copy(
            update={"uri": f"pvc://models/kondense/{track.artifact.sha256[:8]}"}
        )
        return replace(track, artifact=where)

    return replace(topo, stable=at(topo.stable), canary=at(topo.canary), standby=at(topo.standby))


def plan_of(spec: CompressedModelSpec, topo: Topology) -> ServingPlan:
    topo = located(topo)
    router = TRAFFIC_ROUTERS[spec.rollout.trafficRouting.type]
    return serving_plan(
        ServingContext(spec, OWNER, OperatorSettings()), topo, SERVING_BACKENDS[spec.serving.runtime], router
    )


def objects(plan: ServingPlan, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in plan.apply if o["kind"] == kind}


def selects(service: dict[str, Any], deployment: dict[str, Any]) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in service["spec"]["selector"].items())


def sha_of(deployment: dict[str, Any]) -> str:
    return deployment["spec"]["template"]["metadata"]["annotations"]["kondense.dev/artifact-sha256"]


def test_during_the_bake_the_previous_artifact_is_warm_and_selected_by_no_service() -> None:
    driver = baking_driver("10m")
    topo = topology(driver.spec, driver.status, ReplicaRouter().split, standby_seen(driver))
    assert topo.standby is not None and not topo.serve_standby
    assert topo.standby.artifact.sha256 == sha(BASE) and topo.standby.replicas == driver.spec.serving.replicas
    plan = plan_of(driver.spec, topo)
    deployments, services = objects(plan, "Deployment"), objects(plan, "Service")
    standby, stable = deployments["digits-standby"], deployments["digits-stable"]
    assert sha_of(standby) == sha(BASE) and sha_of(stable) == sha("int8")
    assert standby["spec"]["template"]["metadata"]["labels"][MODEL_LABEL] == "digits-standby"
    assert (
        standby["spec"]["selector"]["matchLabels"].items()
        <= standby["spec"]["template"]["metadata"]["labels"].items()
    )
    args = standby["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--variant") + 1] == "stable"  # once it serves, it counts as stable
    for service in services.values():
        assert not selects(service, standby), service["metadata"]["name"]
    assert selects(services["digits"], stable) and selects(services["digits-stable"], stable)
    for obj in [*deployments.values(), *services.values()]:
        kubernetes_validate.validate(obj, "1.33", strict=True)


def test_a_revert_switches_the_services_to_the_warm_standby_in_the_same_reconcile() -> None:
    driver = baking_driver("10m")
    driver.tick(
        replace(driver.serving(stable_sha=sha("int8")), readings=BAKE_SLOW), advance=driver.interval()
    )
    status = driver.status
    assert status.phase is Phase.ROLLED_BACK and status.bake is not None and status.bake.standbyServing
    topo = topology(driver.spec, status, ReplicaRouter().split, standby_seen(driver))
    assert topo.serve_standby and topo.stable is not None and topo.stable.artifact.sha256 == sha(BASE)
    plan = plan_of(driver.spec, topo)
    deployments, services = objects(plan, "Deployment"), objects(plan, "Service")
    standby, stable = deployments["digits-standby"], deployments["digits-stable"]
    assert sha_of(stable) == sha(BASE)  # stable rolls back behind the standby
    assert selects(services["digits"], standby) and selects(services["digits-stable"], standby)
    assert not selects(services["digits"], stable) and not selects(services["digits-stable"], stable)
    # the switch changes values only, never the keys (an applied selector is merged, not replaced)
    normal = objects(plan_of(driver.spec, replace(topo, serve_standby=False)), "Service")
    for name, service in services.items():
        assert service["spec"]["selector"].keys() == normal[name]["spec"]["selector"].keys()
    assert ("Deployment", "digits-standby") not in plan.delete


def test_a_standby_not_ready_yet_takes_no_traffic() -> None:
    driver = baking_driver("10m")
    driver.tick(
        replace(driver.serving(stable_sha=sha("int8")), readings=BAKE_SLOW), advance=driver.interval()
    )
    for seen in (None, standby_seen(driver, ready=False), standby_seen(driver, artifact="int8")):
        topo = topology(driver.spec, driver.status, ReplicaRouter().split, seen)
        assert topo.standby is not None and not topo.serve_standby
        services = objects(plan_of(driver.spec, topo), "Service")
        assert services["digits"]["spec"]["selector"] == {MODEL_LABEL: "digits"}


def test_once_stable_has_rolled_back_the_services_return_and_the_standby_goes() -> None:
    driver = baking_driver("10m")
    driver.tick(
        replace(driver.serving(stable_sha=sha("int8")), readings=BAKE_SLOW), advance=driver.interval()
    )
    # stable still rolling (its template on base, not yet settled): the standby keeps serving
    n = driver.spec.serving.replicas
    rolling = replace(driver.serving(), stable=TrackObservation(n, n, 1, sha(BASE), False))
    driver.tick(rolling, advance=2)
    assert driver.status.bake is not None and driver.status.bake.standbyServing
    driver.tick(driver.serving(), advance=2)  # settled on base
    assert driver.status.bake is not None and not driver.status.bake.standbyServing
    topo = topology(driver.spec, driver.status, ReplicaRouter().split, standby_seen(driver))
    assert topo.standby is None and not topo.serve_standby
    plan = plan_of(driver.spec, topo)
    assert "digits-standby" not in objects(plan, "Deployment")
    assert ("Deployment", "digits-standby") in plan.delete  # after the Services are applied
    assert objects(plan, "Service")["digits"]["spec"]["selector"] == {MODEL_LABEL: "digits"}


@pytest.mark.parametrize("bake", [None, "30s"])
def test_no_standby_without_a_bake_or_once_the_bake_passed(bake: str | None) -> None:
    if bake is None:
        driver = Driver(digits_spec())
        driver.to_canary()
        driver.through_the_steps()
        assert driver.status.phase is Phase.PROMOTED
    else:
        driver = baking_driver(bake)
        for _ in range(3):
            driver.tick(replace(driver.serving(), readings=BAKE_GOOD), advance=driver.interval())
        assert driver.status.phase is Phase.PROMOTED
    topo = topology(driver.spec, driver.status, ReplicaRouter().split, standby_seen(driver))
    assert topo.standby is None and not topo.serve_standby
    assert ("Deployment", "digits-standby") in plan_of(driver.spec, topo).delete


def promoting_driver(bake: str | None = "10m") -> Driver:
    """Through every step: the final promotion has begun (stable rolls to the variant's artifact)."""
    body = digits_body()
    if bake is not None:
        body["spec"]["rollout"]["bake"] = bake
    driver = Driver(CompressedModelSpec.model_validate(body["spec"]))
    driver.to_canary()
    for _ in driver.spec.rollout.steps:
        driver.tick(replace(driver.serving(), readings=GOOD), advance=driver.interval())
    assert driver.status.canary is not None and driver.status.canary.promoting
    return driver


def test_the_standby_starts_with_the_final_promotion_and_serves_a_revert_early_in_the_bake() -> None:
    driver = promoting_driver()
    spec, n = driver.spec, driver.spec.serving.replicas
    # promotion start: stable rolls to int8, the previous artifact (base) starts warm beside it
    topo = topology(spec, driver.status, ReplicaRouter().split, None)
    assert topo.promoting and topo.stable is not None and topo.stable.artifact.sha256 == sha("int8")
    assert topo.standby is not None and topo.standby.artifact.sha256 == sha(BASE) and not topo.serve_standby
    plan = plan_of(spec, topo)
    deployments, services = objects(plan, "Deployment"), objects(plan, "Service")
    assert sha_of(deployments["digits-standby"]) == sha(BASE)
    assert ("Deployment", "digits-standby") not in plan.delete
    for service in services.values():  # warm, selected by no Service before a revert
        assert not selects(service, deployments["digits-standby"]), service["metadata"]["name"]
    # stable already settled on int8 but the standby's pods still start: the bake waits for them
    starting = replace(driver.serving(), standby=TrackObservation(n, 0, n, sha(BASE), False))
    driver.tick(starting, advance=1)
    assert driver.status.phase is Phase.CANARY and driver.status.canary and driver.status.canary.promoting
    assert "waits for the standby (0/" in (driver.status.message or "")
    # ready: the bake starts, the standby is the same Deployment as before (nothing restarts)
    driver.tick(driver.serving(), advance=1)
    assert driver.status.phase is Phase.BAKING
    baking = topology(spec, driver.status, ReplicaRouter().split, standby_seen(driver))
    assert baking.standby == topo.standby and not baking.serve_standby
    # a breach 5 s into the bake (a continuous analysis): the Services switch to the ready standby in
    # the reconcile of the decision
    driver.tick(replace(driver.serving(stable_sha=sha("int8")), readings=BAKE_SLOW), advance=5)
    assert driver.status.phase is Phase.ROLLED_BACK
    assert driver.status.bake is not None and driver.status.bake.standbyServing
    reverted = topology(spec, driver.status, ReplicaRouter().split, standby_seen(driver))
    assert reverted.serve_standby
    services = objects(plan_of(spec, reverted), "Service")
    assert services["digits"]["spec"]["selector"] == {MODEL_LABEL: "digits-standby"}
    # stable rolled back behind it: the Services return to stable and the standby goes
    driver.tick(driver.serving(), advance=2)
    released = topology(spec, driver.status, ReplicaRouter().split, standby_seen(driver))
    assert released.standby is None and not released.serve_standby
    assert ("Deployment", "digits-standby") in plan_of(spec, released).delete


def test_a_standby_that_never_gets_ready_delays_the_bake_at_most_the_ready_timeout() -> None:
    driver = promoting_driver()
    n = driver.spec.serving.replicas
    stuck = replace(driver.serving(), standby=TrackObservation(n, 0, n, sha(BASE), False))
    decision = driver.tick(stuck, advance=1)
    assert driver.status.phase is Phase.CANARY and not decision.events
    decision = driver.tick(stuck, advance=ready_timeout(driver.spec).total_seconds())
    assert driver.status.phase is Phase.BAKING
    assert [e.reason for e in decision.events] == ["StandbyNotReady", "Baking"]
    assert "a revert rolls stable back pod by pod" in decision.events[0].message


def test_a_bake_that_passes_removes_the_standby_started_at_the_promotion() -> None:
    driver = promoting_driver("30s")
    driver.tick(driver.serving(), advance=1)
    assert driver.status.phase is Phase.BAKING
    for _ in range(3):
        driver.tick(replace(driver.serving(), readings=BAKE_GOOD), advance=driver.interval())
    assert driver.status.phase is Phase.PROMOTED
    topo = topology(driver.spec, driver.status, ReplicaRouter().split, standby_seen(driver))
    assert topo.standby is None
    assert ("Deployment", "digits-standby") in plan_of(driver.spec, topo).delete


def test_without_a_bake_the_promotion_starts_no_standby() -> None:
    driver = promoting_driver(bake=None)
    topo = topology(driver.spec, driver.status, ReplicaRouter().split, None)
    assert topo.promoting and topo.standby is None

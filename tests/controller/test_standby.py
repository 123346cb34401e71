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
from kondense.operator.rollout import BASE, Topology, Track, TrackObservation, topology
from kondense.operator.routers import TRAFFIC_ROUTERS, ReplicaRouter
from kondense.operator.settings import OperatorSettings
from kondense.operator.workloads import ServingPlan, serving_plan
from kondense_testing.builders import digits_spec, sha

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

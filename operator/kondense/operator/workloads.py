"""The full set of serving objects for a topology (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kondense.operator.backends import ServingBackend, ServingContext
from kondense.operator.naming import MODEL_LABEL, TRACK_LABEL, Names
from kondense.operator.objects import loadgen_job, service
from kondense.operator.rollout import Topology, Track
from kondense.operator.routers import TrafficRouter


@dataclass
class ServingPlan:
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)


def serving_plan(
    ctx: ServingContext, topo: Topology, backend: ServingBackend, router: TrafficRouter
) -> ServingPlan:
    plan = ServingPlan()
    if topo.stable is None:
        return plan
    names, spec = ctx.names, ctx.spec
    port = spec.serving.port
    plan.apply += backend.workload(ctx, "stable", topo.stable, topo.stable.replicas)
    if topo.canary is not None:
        plan.apply += backend.workload(ctx, "canary", topo.canary, topo.canary.replicas)
    else:
        plan.delete.append(("Deployment", names.deployment("canary")))
    if topo.standby is not None:
        plan.apply += standby_workload(ctx, topo.standby, backend)
    model = {"kondense.dev/model": names.model}
    labels = names.labels("server")
    if topo.serve_standby:  # an instant revert: the same keys, the standby's model label value
        model = {"kondense.dev/model": standby_model(names)}
    plan.apply.append(service(ctx.owner, names.service(), model, port, labels))
    for track in ("stable", "canary"):
        selector = {"kondense.dev/model": names.model} if track == "canary" else model
        plan.apply.append(
            service(ctx.owner, names.service(track), {**selector, TRACK_LABEL: track}, port, labels)
        )
    route = spec.rollout.trafficRouting.httpRoute
    weight = topo.weight if topo.canary else 0
    routes = router.objects(names, weight, route, port)
    if weight == 0 or topo.canary is None or topo.canary.replicas == 0:
        # stable is never starved: the canary's weight goes to 0 before its pods scale down
        plan.apply[:0] = routes
    else:
        plan.apply += routes
    canary_serves = topo.canary is not None and topo.canary.replicas > 0
    if (canary_serves or topo.baking) and spec.rollout.analysis.loadTest is not None:
        plan.apply.append(loadgen_job(spec, ctx.owner, ctx.settings, ctx.service_url(None)))
    else:
        plan.delete.append(("Job", names.loadgen()))
    if topo.standby is None:  # after the Services: they no longer select its pods
        plan.delete.append(("Deployment", names.deployment(STANDBY)))
    return plan


STANDBY = "standby"


def standby_selector(names: Names) -> dict[str, str]:
    """The standby's pods: the model label's value is ``<model>-standby`` (so no Service of the model
    and no pod query by model selects them), the track label ``stable``. The Services switch by value,
    never by adding or removing a key (an applied selector is merged: a key left over would select
    nothing)."""
    return {MODEL_LABEL: standby_model(names), TRACK_LABEL: "stable"}


def standby_model(names: Names) -> str:
    return f"{names.model}-{STANDBY}"


def standby_workload(ctx: ServingContext, track: Track, backend: ServingBackend) -> list[dict[str, Any]]:
    """The previous stable artifact's Deployment, kept warm: stable's own workload (its pods count as
    ``variant="stable"`` in the metrics once they serve) under its own name, its pods labelled with
    ``standby_selector`` so that no Service selects them until a revert points the Services there."""
    names = ctx.names
    out = []
    for obj in backend.workload(ctx, "stable", track, track.replicas):
        if obj.get("kind") != "Deployment":
            continue  # every backend's workload is its Deployment alone today
        obj["metadata"]["name"] = names.deployment(STANDBY)
        spec = obj["spec"]
        template = spec["template"]["metadata"]
        template["labels"] = {**template["labels"], **standby_selector(names)}
        spec["selector"] = {"matchLabels": standby_selector(names)}
        out.append(obj)
    return out

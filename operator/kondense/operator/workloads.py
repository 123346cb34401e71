"""The full set of serving objects for a topology (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kondense.api.resource import Autoscaling
from kondense.operator.backends import ServingBackend, ServingContext
from kondense.operator.naming import AUTOSCALED_ANNOTATION, MODEL_LABEL, TRACK_LABEL, Names
from kondense.operator.objects import horizontal_pod_autoscaler, loadgen_job, service
from kondense.operator.rollout import ReplicaSplit, Topology, Track, TrackObservation
from kondense.operator.routers import Cohort, TrafficRouter

HPA = "HorizontalPodAutoscaler"


@dataclass
class ServingPlan:
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)


def autoscaling_bounds(
    autoscaling: Autoscaling, split: ReplicaSplit, topo: Topology
) -> dict[str, tuple[int, int] | None]:
    """(minReplicas, maxReplicas) of each track's HPA: the bounds split as the router splits replicas
    at the requested weight (stable whole while it is promoted), at least one pod for a serving track;
    None for a track that serves nothing (no HPA: its Deployment is scaled to 0)."""
    low_stable, low_canary = split(autoscaling.minReplicas, topo.weight)
    high_stable, high_canary = split(autoscaling.maxReplicas, topo.weight)
    if topo.promoting or topo.canary is None:
        low_stable, high_stable = autoscaling.minReplicas, autoscaling.maxReplicas
    bounds: dict[str, tuple[int, int] | None] = {
        "stable": (max(1, low_stable), max(1, low_stable, high_stable))
    }
    canary_serves = topo.canary is not None and topo.canary.replicas > 0
    bounds["canary"] = (max(1, low_canary), max(1, low_canary, high_canary)) if canary_serves else None
    return bounds


def _autoscale(
    ctx: ServingContext,
    plan: ServingPlan,
    topo: Topology,
    split: ReplicaSplit,
    observed: Mapping[str, TrackObservation | None],
) -> None:
    """Hand each Deployment's replicas to its HPA: a Deployment carries `replicas` only when it is
    created or its current count is outside the HPA's new bounds (clamped, as the HPA itself would),
    so the operator never undoes what the HPA decided."""
    autoscaling = ctx.spec.serving.autoscaling
    names = ctx.names
    deployments = {o["metadata"]["name"]: o for o in plan.apply if o["kind"] == "Deployment"}
    if autoscaling is None:
        for track, seen in observed.items():
            if seen is not None and seen.autoscaled:  # autoscaling was switched off: replicas are ours
                plan.delete.append((HPA, names.deployment(track)))
                deployment = deployments.get(names.deployment(track))
                if deployment is not None:
                    deployment["metadata"].setdefault("annotations", {})[AUTOSCALED_ANNOTATION] = "false"
        return
    for track, bound in autoscaling_bounds(autoscaling, split, topo).items():
        name = names.deployment(track)
        deployment = deployments.get(name)
        seen = observed.get(track)
        if (deployment is None or bound is None) and seen is not None and seen.autoscaled:
            plan.delete.append((HPA, name))  # once, as the track stops serving
        if deployment is None:
            continue
        if bound is None:  # a track that serves nothing keeps no pods (and no HPA: its minimum is 1)
            deployment["metadata"].setdefault("annotations", {})[AUTOSCALED_ANNOTATION] = "false"
            continue
        low, high = bound
        deployment["metadata"].setdefault("annotations", {})[AUTOSCALED_ANNOTATION] = "true"
        current = seen.replicas if seen is not None and seen.autoscaled else None
        if current is not None and low <= current <= high:
            del deployment["spec"]["replicas"]  # the HPA's to decide
        else:
            deployment["spec"]["replicas"] = low if current is None else min(max(current, low), high)
        hpa = horizontal_pod_autoscaler(
            ctx.owner, name, deployment["metadata"]["labels"], low, high, autoscaling.targetCPUUtilization
        )
        plan.apply.insert(plan.apply.index(deployment) + 1, hpa)


def serving_plan(
    ctx: ServingContext,
    topo: Topology,
    backend: ServingBackend,
    router: TrafficRouter,
    observed: Mapping[str, TrackObservation | None] | None = None,
) -> ServingPlan:
    """``observed``: the serving Deployments as they are (by track), for autoscaling."""
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
    _autoscale(ctx, plan, topo, router.split, observed or {})
    if topo.standby is not None:
        plan.apply += standby_workload(ctx, topo.standby, backend)
    model = {"kondense.dev/model": names.model}
    labels = names.labels("server")
    if topo.serve_standby:  # an instant revert: the same keys, the standby's model label value
        model = {"kondense.dev/model": standby_model(names)}
    # mirror first: the model's Service selects only stable pods, so no user request reaches the canary
    users = {**model, TRACK_LABEL: "stable"} if topo.mirror else model
    plan.apply.append(service(ctx.owner, names.service(), users, port, labels))
    for track in ("stable", "canary"):
        selector = {"kondense.dev/model": names.model} if track == "canary" else model
        plan.apply.append(
            service(ctx.owner, names.service(track), {**selector, TRACK_LABEL: track}, port, labels)
        )
    route = spec.rollout.trafficRouting.httpRoute
    weight = topo.weight if topo.canary else 0
    # the router mirrors only what the serving backend does not tee itself (Triton)
    mirror = topo.mirror if topo.canary is not None and not backend.tees_requests else 0
    cohort = None
    rollout = spec.rollout
    if topo.canary is not None and (rollout.match or rollout.sessionAffinity is not None):
        cohort = Cohort(rollout.match, rollout.sessionAffinity, topo.canary.artifact.sha256[:12])
    routes = router.objects(names, weight, route, port, cohort, mirror=mirror)
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

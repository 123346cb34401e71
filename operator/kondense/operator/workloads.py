"""The full set of serving objects for a topology (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kondense.operator.backends import ServingBackend, ServingContext
from kondense.operator.naming import TRACK_LABEL
from kondense.operator.objects import loadgen_job, service
from kondense.operator.rollout import Topology
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
    model = {"kondense.dev/model": names.model}
    labels = names.labels("server")
    # mirror first: the model's Service selects only stable pods, so no user request reaches the canary
    users = {**model, TRACK_LABEL: "stable"} if topo.mirror else model
    plan.apply.append(service(ctx.owner, names.service(), users, port, labels))
    for track in ("stable", "canary"):
        plan.apply.append(
            service(ctx.owner, names.service(track), {**model, TRACK_LABEL: track}, port, labels)
        )
    route = spec.rollout.trafficRouting.httpRoute
    weight = topo.weight if topo.canary else 0
    # the router mirrors only what the serving backend does not tee itself (Triton)
    mirror = topo.mirror if topo.canary is not None and not backend.tees_requests else 0
    routes = router.objects(names, weight, route, port, mirror=mirror)
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
    return plan

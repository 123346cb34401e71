"""Traffic routers: how a canary weight becomes traffic (registry, like Flagger's router.Interface).

A router owns everything about its traffic objects: what they should say (``objects``), whether the
operator may touch them (``check``), how they are written (``apply``) and what weight they give the
canary (``observed_weight``). Adding a router touches only its class and ``TRAFFIC_ROUTERS``.

The Gateway API router only patches an HTTPRoute in the CompressedModel's own namespace that opts in
with the label ``kondense.dev/canary-of: <CompressedModel name>``: a CR author cannot take over a
route they do not own.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from kondense.api.resource import HTTPRouteRef, RouterType, TrafficRouting
from kondense.operator.naming import CANARY_OF_LABEL, Names
from kondense.operator.rollout import ready_ratio

GATEWAY_GROUP, GATEWAY_VERSION, HTTPROUTES = "gateway.networking.k8s.io", "v1", "httproutes"


class RouteRefused(RuntimeError):
    """The traffic object may not be written (missing, or it does not opt in)."""


class CustomObjects(Protocol):
    """What a router needs from the API (``KubeClient`` has it)."""

    def get_custom(
        self, group: str, version: str, plural: str, namespace: str, name: str
    ) -> dict[str, Any] | None: ...

    def patch_custom(
        self, group: str, version: str, plural: str, namespace: str, name: str, body: dict[str, Any]
    ) -> None: ...


class TrafficRouter(Protocol):
    @property
    def kind(self) -> RouterType: ...

    def split(self, total: int, weight: int) -> tuple[int, int]:
        """(stable replicas, canary replicas) for ``total`` serving replicas at ``weight`` percent."""
        ...

    def objects(
        self, names: Names, weight: int, route: HTTPRouteRef | None, port: int, mirror: int = 0
    ) -> list[dict[str, Any]]:
        """Extra objects that carry the weight (an HTTPRoute), beyond Deployments and Services;
        ``mirror``: percent of the requests copied to the canary (mirror first), when the router does it."""
        ...

    def owns(self, obj: dict[str, Any]) -> bool:
        """Whether ``obj`` is one of ``objects`` (written by ``apply``, not as a plain child)."""
        ...

    def check(self, api: CustomObjects, namespace: str, model: str, routing: TrafficRouting) -> list[str]:
        """Why the router may not route for ``model`` (nothing is created while this is not empty)."""
        ...

    def apply(self, api: CustomObjects, namespace: str, model: str, obj: dict[str, Any]) -> str:
        """Write one of ``objects`` (created|patched|unchanged); RouteRefused when it may not."""
        ...

    def observed_weight(self, requested: int, stable_ready: int, canary_ready: int) -> int:
        """The canary traffic percent actually achieved."""
        ...


class ReplicaRouter:
    """Stable and canary pods behind one Service: the ready-pod ratio is the weight.

    Works on any cluster (kind included); the granularity is 1/replicas, so the canary gets the
    count closest to the weight, at least one pod while the weight is above 0.
    """

    kind = RouterType.REPLICAS

    def split(self, total: int, weight: int) -> tuple[int, int]:
        if weight <= 0:
            return total, 0
        if weight >= 100:
            return 0, total
        canary = min(max(math.floor(total * weight / 100 + 0.5), 1), total - 1 if total > 1 else 1)
        return total - canary, canary

    def objects(
        self, names: Names, weight: int, route: HTTPRouteRef | None, port: int, mirror: int = 0
    ) -> list[dict[str, Any]]:
        return []  # a copy to the canary is the stable server's (onnxruntime tees); triton needs gatewayAPI

    def owns(self, obj: dict[str, Any]) -> bool:
        return False

    def check(self, api: CustomObjects, namespace: str, model: str, routing: TrafficRouting) -> list[str]:
        return []

    def apply(self, api: CustomObjects, namespace: str, model: str, obj: dict[str, Any]) -> str:
        raise RouteRefused(f"the replicas router writes no {obj.get('kind')}")

    def observed_weight(self, requested: int, stable_ready: int, canary_ready: int) -> int:
        return ready_ratio(stable_ready, canary_ready)


def route_problems(route: dict[str, Any] | None, namespace: str, name: str, model: str) -> list[str]:
    """Why kondense may not set the weights of this HTTPRoute for CompressedModel ``model`` (pure)."""
    if route is None:
        return [f"HTTPRoute {namespace}/{name} (spec.rollout.trafficRouting.httpRoute) does not exist"]
    labels = (route.get("metadata") or {}).get("labels") or {}
    owner = labels.get(CANARY_OF_LABEL)
    if owner != model:
        found = f"it has {CANARY_OF_LABEL}={owner!r}" if owner is not None else "it has no such label"
        return [
            f"HTTPRoute {namespace}/{name} does not opt in to kondense: label it "
            f"{CANARY_OF_LABEL}={model} to let this CompressedModel set its backends ({found})"
        ]
    return []


class GatewayAPIRouter:
    """HTTPRoute backend weights over the stable and canary Services (Gateway API)."""

    kind = RouterType.GATEWAY_API

    def split(self, total: int, weight: int) -> tuple[int, int]:
        if weight <= 0:
            return total, 0
        return total, max(1, math.ceil(total * weight / 100))

    def objects(
        self, names: Names, weight: int, route: HTTPRouteRef | None, port: int, mirror: int = 0
    ) -> list[dict[str, Any]]:
        if route is None:  # (TrafficRouting refuses gatewayAPI without httpRoute)
            return []
        # no namespace: a route is only ever the CompressedModel's own namespace's
        rule: dict[str, Any] = {
            "backendRefs": [
                {"name": names.service("stable"), "port": port, "weight": 100 - weight},
                {"name": names.service("canary"), "port": port, "weight": weight},
            ]
        }
        if mirror > 0:  # mirror first: copies to the canary Service, whose answers the gateway drops
            rule["filters"] = [
                {
                    "type": "RequestMirror",
                    "requestMirror": {
                        "backendRef": {"name": names.service("canary"), "port": port},
                        "percent": mirror,
                    },
                }
            ]
        return [
            {
                "apiVersion": f"{GATEWAY_GROUP}/{GATEWAY_VERSION}",
                "kind": "HTTPRoute",
                "metadata": {"name": route.name},
                "spec": {"rules": [rule]},
            }
        ]

    def owns(self, obj: dict[str, Any]) -> bool:
        return obj.get("kind") == "HTTPRoute" and str(obj.get("apiVersion", "")).startswith(
            f"{GATEWAY_GROUP}/"
        )

    def check(self, api: CustomObjects, namespace: str, model: str, routing: TrafficRouting) -> list[str]:
        if routing.httpRoute is None:
            return ["spec.rollout.trafficRouting.httpRoute: required when type is gatewayAPI"]
        name = routing.httpRoute.name
        route = api.get_custom(GATEWAY_GROUP, GATEWAY_VERSION, HTTPROUTES, namespace, name)
        return route_problems(route, namespace, name, model)

    def apply(self, api: CustomObjects, namespace: str, model: str, obj: dict[str, Any]) -> str:
        """Set backend weights on the user's HTTPRoute (it owns parentRefs/matches; we own weights)."""
        name = obj["metadata"]["name"]
        current = api.get_custom(GATEWAY_GROUP, GATEWAY_VERSION, HTTPROUTES, namespace, name)
        problems = route_problems(current, namespace, name, model)
        if problems or current is None:  # checked again here: the label may have gone since `check`
            raise RouteRefused("; ".join(problems))
        rules = (current.get("spec") or {}).get("rules") or [{}]
        wanted_refs = obj["spec"]["rules"][0]["backendRefs"]
        canary = wanted_refs[1]["name"]
        wanted_mirror = obj["spec"]["rules"][0].get("filters") or []

        def filters(rule: dict[str, Any]) -> list[dict[str, Any]]:
            """The rule's filters with ours (a RequestMirror to our canary) as wanted; the user's kept."""
            theirs = [f for f in rule.get("filters") or [] if not _mirrors_to(f, canary)]
            return theirs + wanted_mirror

        if all(r.get("backendRefs") == wanted_refs and (r.get("filters") or []) == filters(r) for r in rules):
            return "unchanged"
        for rule in rules:
            rule["backendRefs"] = wanted_refs
            rule["filters"] = filters(rule)
            if not rule["filters"]:
                del rule["filters"]
        api.patch_custom(
            GATEWAY_GROUP, GATEWAY_VERSION, HTTPROUTES, namespace, name, {"spec": {"rules": rules}}
        )
        return "patched"

    def observed_weight(self, requested: int, stable_ready: int, canary_ready: int) -> int:
        # the route carries the requested weight as soon as a canary pod can take it
        return requested if canary_ready else ready_ratio(stable_ready, canary_ready)


def _mirrors_to(filter_: dict[str, Any], service: str) -> bool:
    """Whether an HTTPRoute filter is a RequestMirror to ``service`` (ours: the canary's)."""
    ref = (filter_.get("requestMirror") or {}).get("backendRef") or {}
    return filter_.get("type") == "RequestMirror" and ref.get("name") == service and not ref.get("kind")


TRAFFIC_ROUTERS: dict[RouterType, TrafficRouter] = {
    RouterType.REPLICAS: ReplicaRouter(),
    RouterType.GATEWAY_API: GatewayAPIRouter(),
}

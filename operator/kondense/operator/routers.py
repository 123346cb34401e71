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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kondense.api.resource import CohortMatch, HTTPRouteRef, RouterType, SessionAffinity, TrafficRouting
from kondense.operator.kube import _subset_differs
from kondense.operator.naming import CANARY_OF_LABEL, Names
from kondense.operator.rollout import ready_ratio

GATEWAY_GROUP, GATEWAY_VERSION, HTTPROUTES = "gateway.networking.k8s.io", "v1", "httproutes"
OWN_RULE_PREFIX = "kondense-"  # HTTPRoute rules kondense adds (and removes); the others are the user's
COHORT_RULE = "kondense-cohort"
# Gateway API v1 HTTPRoute limits (the CRD's maxItems and its CEL rule on the total of matches)
MAX_RULES, MAX_MATCHES_PER_RULE, MAX_MATCHES, MAX_HEADERS = 16, 64, 128, 16


@dataclass(frozen=True)
class Cohort:
    """Who goes to the canary whatever its weight: ``match`` header rules (A/B) and the users that
    carry the session cookie (``affinity``) whose value is ``token`` (the canary's artifact)."""

    match: Sequence[CohortMatch] = ()
    affinity: SessionAffinity | None = None
    token: str = ""

    def set_cookie(self) -> str | None:
        if self.affinity is None:
            return None
        a = self.affinity
        return f"{a.cookieName}={self.token}; Max-Age={a.maxAge}; Path=/; HttpOnly; SameSite=Lax"

    def header_sets(self) -> list[list[dict[str, str]]]:
        """One list of header matches per way into the canary (any of them, all headers of one)."""
        sets = [[h.model_dump(mode="json") for h in m.headers] for m in self.match]
        if self.affinity is not None:
            cookie = rf"(^|.*;\s*){self.affinity.cookieName}={self.token}(;.*|$)"
            sets.append([{"name": "Cookie", "value": cookie, "type": "RegularExpression"}])
        return sets


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
        self,
        names: Names,
        weight: int,
        route: HTTPRouteRef | None,
        port: int,
        cohort: Cohort | None = None,
        mirror: int = 0,
    ) -> list[dict[str, Any]]:
        """Extra objects that carry the weight (an HTTPRoute), beyond Deployments and Services; with
        ``cohort``, the rules that send its requests to the canary; ``mirror``: percent of the requests
        copied to the canary (mirror first), when the router does it."""
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
        self,
        names: Names,
        weight: int,
        route: HTTPRouteRef | None,
        port: int,
        cohort: Cohort | None = None,
        mirror: int = 0,
    ) -> list[dict[str, Any]]:
        # spec.rollout.match / sessionAffinity are refused by the models for this router; a copy to the
        # canary (mirror first) is the stable server's (onnxruntime tees); triton needs gatewayAPI
        return []

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
        self,
        names: Names,
        weight: int,
        route: HTTPRouteRef | None,
        port: int,
        cohort: Cohort | None = None,
        mirror: int = 0,
    ) -> list[dict[str, Any]]:
        """The first rule is a template: its backendRefs go on every rule of the user's route. A cohort
        rule (while the canary takes traffic) is derived by ``apply`` from each of the user's rules."""
        if route is None:  # (TrafficRouting refuses gatewayAPI without httpRoute)
            return []
        canary: dict[str, Any] = {"name": names.service("canary"), "port": port, "weight": weight}
        cookie = cohort.set_cookie() if cohort is not None and weight > 0 else None
        if cookie is not None:  # the canary's answers on the weighted path hand out the session cookie
            modifier = {"add": [{"name": "Set-Cookie", "value": cookie}]}
            canary["filters"] = [{"type": "ResponseHeaderModifier", "responseHeaderModifier": modifier}]
        rules: list[dict[str, Any]] = [
            {"backendRefs": [{"name": names.service("stable"), "port": port, "weight": 100 - weight}, canary]}
        ]
        if mirror > 0:  # mirror first: copies to the canary Service, whose answers the gateway drops
            rules[0]["filters"] = [
                {
                    "type": "RequestMirror",
                    "requestMirror": {
                        "backendRef": {"name": names.service("canary"), "port": port},
                        "percent": mirror,
                    },
                }
            ]
        sets = cohort.header_sets() if cohort is not None and weight > 0 else []
        if sets:
            rules.append(
                {
                    "name": COHORT_RULE,
                    "matches": [{"headers": headers} for headers in sets],
                    "backendRefs": [{"name": names.service("canary"), "port": port, "weight": 1}],
                }
            )
        # no namespace: a route is only ever the CompressedModel's own namespace's
        return [
            {
                "apiVersion": f"{GATEWAY_GROUP}/{GATEWAY_VERSION}",
                "kind": "HTTPRoute",
                "metadata": {"name": route.name},
                "spec": {"rules": rules},
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
        current_rules = (current.get("spec") or {}).get("rules") or [{}]
        wanted = obj["spec"]["rules"]
        canary = wanted[0]["backendRefs"][1]["name"]
        # our RequestMirror (mirror first) goes on each of the user's rules next to their own filters
        wanted_mirror = wanted[0].get("filters") or []
        template = [{k: v for k, v in wanted[0].items() if k != "filters"}, *wanted[1:]]
        users = [_without_mirror(rule, canary) for rule in current_rules]
        rules = route_rules(users, template, f"HTTPRoute {namespace}/{name}")
        for rule in rules:
            if not str(rule.get("name") or "").startswith(OWN_RULE_PREFIX) and wanted_mirror:
                rule["filters"] = [*(rule.get("filters") or []), *wanted_mirror]
        mirroring = any(_mirrors_to(f, canary) for rule in current_rules for f in rule.get("filters") or [])
        # server defaults (kind, group, ...) ignored; a mirror to drop is a change the subset cannot see
        if not _subset_differs(rules, current_rules) and mirroring == bool(wanted_mirror):
            return "unchanged"
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


def _without_mirror(rule: dict[str, Any], canary: str) -> dict[str, Any]:
    """A user's rule without our RequestMirror to the canary (their own filters kept)."""
    filters = [f for f in rule.get("filters") or [] if not _mirrors_to(f, canary)]
    out = {k: v for k, v in rule.items() if k != "filters"}
    return {**out, "filters": filters} if filters else out


def route_rules(
    current: list[dict[str, Any]], wanted: list[dict[str, Any]], where: str
) -> list[dict[str, Any]]:
    """The rules of a user's route with kondense's part in them (pure). ``wanted`` is what ``objects``
    says: its first rule's backendRefs go on each of the user's rules (which keep their matches,
    filters and timeouts); each further rule becomes one rule per user rule, matching that rule's
    matches plus the cohort's headers. kondense's earlier rules (named ``kondense-...``) are replaced.
    RouteRefused when the result would break the Gateway API limits."""
    base = [r for r in current if not str(r.get("name") or "").startswith(OWN_RULE_PREFIX)] or [{}]
    out = [{**rule, "backendRefs": wanted[0]["backendRefs"]} for rule in base]
    for extra in wanted[1:]:
        for index, rule in enumerate(base):
            keep = {k: v for k, v in rule.items() if k not in ("name", "matches", "backendRefs")}
            matches = []
            for user_match in rule.get("matches") or [{}]:
                names = {str(h.get("name", "")).lower() for h in user_match.get("headers") or []}
                for cohort_match in extra["matches"]:
                    clash = names & {h["name"].lower() for h in cohort_match["headers"]}
                    if clash:
                        raise RouteRefused(
                            f"{where}: rule {index} already matches header {sorted(clash)[0]!r}, which "
                            "spec.rollout.match (or the session cookie) matches too"
                        )
                    headers = [*(user_match.get("headers") or []), *cohort_match["headers"]]
                    if len(headers) > MAX_HEADERS:
                        raise RouteRefused(f"{where}: rule {index}: over {MAX_HEADERS} header matches")
                    matches.append({**user_match, "headers": headers})
            if len(matches) > MAX_MATCHES_PER_RULE:
                raise RouteRefused(
                    f"{where}: rule {index}: over {MAX_MATCHES_PER_RULE} matches with the cohort"
                )
            out.append(
                {
                    **keep,
                    "name": f"{extra['name']}-{index}",
                    "matches": matches,
                    "backendRefs": extra["backendRefs"],
                }
            )
    if len(out) > MAX_RULES:
        raise RouteRefused(
            f"{where}: {len(base)} rules and their cohort rules make {len(out)}, over the {MAX_RULES} "
            "an HTTPRoute may have"
        )
    if sum(len(r.get("matches") or [{}]) for r in out) > MAX_MATCHES:
        raise RouteRefused(f"{where}: over {MAX_MATCHES} matches in all with the cohort rules")
    return out


TRAFFIC_ROUTERS: dict[RouterType, TrafficRouter] = {
    RouterType.REPLICAS: ReplicaRouter(),
    RouterType.GATEWAY_API: GatewayAPIRouter(),
}

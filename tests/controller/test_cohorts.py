"""Cohort routing (Gateway API): spec.rollout.match sends matching requests to the canary, session
affinity keeps a user on it; every route kondense writes validates against the Gateway API CRD."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kondense.api.resource import CompressedModelSpec, CompressedModelStatus, Phase
from kondense.operator.backends import SERVING_BACKENDS, ServingContext
from kondense.operator.naming import Names
from kondense.operator.objects import Owner
from kondense.operator.rollout import BASE, JobObservation, JobState, World, reconcile, topology
from kondense.operator.routers import TRAFFIC_ROUTERS, Cohort, GatewayAPIRouter, RouteRefused, route_rules
from kondense.operator.settings import OperatorSettings
from kondense.operator.workloads import serving_plan
from kondense_testing.builders import digits_body, digits_spec, job_result
from kondense_testing.gateway_api import httproute_violations

OWNER = Owner("digits", "ml", "7b9e1c1e-0000-4000-8000-000000000001")
GROUP, VERSION, PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"
USER_ROUTE: dict[str, Any] = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {"name": "shop", "namespace": "ml", "labels": {"kondense.dev/canary-of": "digits"}},
    "spec": {
        "parentRefs": [{"name": "public", "namespace": "gateways"}],
        "hostnames": ["models.example.com"],
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/v2/models/digits"}}],
                "timeouts": {"request": "10s"},
                "backendRefs": [{"name": "digits", "port": 8080}],
            },
            {
                "matches": [{"path": {"type": "Exact", "value": "/healthz"}, "method": "GET"}],
                "backendRefs": [{"name": "digits", "port": 8080}],
            },
        ],
    },
}
COHORTS = {
    "match": [
        {"headers": [{"name": "x-cohort", "value": "beta"}]},
        {
            "headers": [
                {"name": "x-team", "value": "ml-.*", "type": "RegularExpression"},
                {"name": "x-env", "value": "dev"},
            ]
        },
    ],
    "sessionAffinity": {"cookieName": "digits-canary", "maxAge": 3600},
}
GATEWAY = {"type": "gatewayAPI", "httpRoute": {"name": "shop"}}


class Routes:
    """The custom-objects API a router needs, over an in-memory store (as the API server applies a
    JSON merge patch: lists are replaced whole)."""

    def __init__(self, *routes: dict[str, Any]) -> None:
        self.store = {(r["metadata"]["namespace"], r["metadata"]["name"]): copy.deepcopy(r) for r in routes}
        self.patches = 0

    def get_custom(
        self, group: str, version: str, plural: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        assert (group, version, plural) == (GROUP, VERSION, PLURAL)
        route = self.store.get((namespace, name))
        return copy.deepcopy(route) if route is not None else None

    def patch_custom(
        self, group: str, version: str, plural: str, namespace: str, name: str, body: dict[str, Any]
    ) -> None:
        self.patches += 1
        self.store[(namespace, name)]["spec"].update(copy.deepcopy(body["spec"]))

    def route(self) -> dict[str, Any]:
        return self.store[("ml", "shop")]


def spec_with(**rollout: Any) -> CompressedModelSpec:
    body = digits_body()
    body["spec"]["rollout"].update(rollout)
    return CompressedModelSpec.model_validate(body["spec"])


def canary_status(spec: CompressedModelSpec) -> CompressedModelStatus:
    jobs = {BASE: JobObservation(JobState.SUCCEEDED, result=job_result(BASE, size=1.0))}
    for target in spec.targets:
        result = job_result(target.name, delta=0.0, size=0.3)
        assert result.artifact is not None
        result.artifact.uri = f"pvc://models/kondense/ml/digits/abc/{target.name}"
        jobs[target.name] = JobObservation(JobState.SUCCEEDED, result=result)
    jobs[BASE].result.artifact.uri = "pvc://models/kondense/ml/digits/abc/base"  # type: ignore[union-attr]
    now = datetime(2026, 11, 22, tzinfo=UTC)
    status = reconcile(spec, CompressedModelStatus(), 1, World(), now).status
    return reconcile(spec, status, 1, World(jobs=jobs), now).status


def route_objects(spec: CompressedModelSpec, status: Any) -> list[dict[str, Any]]:
    router = TRAFFIC_ROUTERS[spec.rollout.trafficRouting.type]
    plan = serving_plan(
        ServingContext(spec, OWNER, OperatorSettings()),
        topology(spec, status, router.split),
        SERVING_BACKENDS[spec.serving.runtime],
        router,
    )
    return [o for o in plan.apply if o["kind"] == "HTTPRoute"]


def apply(routes: Routes, obj: dict[str, Any]) -> str:
    return GatewayAPIRouter().apply(routes, "ml", "digits", obj)


# ---- the API -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [{"match": COHORTS["match"]}, {"sessionAffinity": {"maxAge": 60}}])
def test_the_replicas_router_refuses_cohorts_clearly(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=r"need trafficRouting\.type gatewayAPI"):
        spec_with(trafficRouting={"type": "replicas"}, **fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"match": [{"headers": []}]}, "at least 1 item"),
        ({"match": [{"headers": [{"name": "x cohort", "value": "beta"}]}]}, "should match pattern"),
        ({"sessionAffinity": {"cookieName": "a;b"}}, "should match pattern"),
        ({"sessionAffinity": {"maxAge": 0}}, "greater than or equal to 1"),
    ],
)
def test_bad_cohorts_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec_with(trafficRouting=GATEWAY, **fields)


def test_kondense_validate_names_the_problem(tmp_path: Any) -> None:
    body = digits_body()
    body["spec"]["rollout"]["match"] = COHORTS["match"]
    path = tmp_path / "cr.yaml"
    path.write_text(yaml.safe_dump(body))
    done = subprocess.run(
        [sys.executable, "-m", "kondense.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "spec.rollout" in done.stderr and "need trafficRouting.type gatewayAPI" in done.stderr
    assert "Traceback" not in done.stderr


# ---- the routes ----------------------------------------------------------------------------------


def test_cohort_rules_validate_and_send_the_cohort_to_the_canary() -> None:
    spec = spec_with(trafficRouting=GATEWAY, **COHORTS)
    status = canary_status(spec)
    assert status.phase is Phase.CANARY
    (obj,) = route_objects(spec, status)
    routes = Routes(USER_ROUTE)
    assert apply(routes, obj) == "patched"
    route = routes.route()
    assert httproute_violations(route) == []

    rules = route["spec"]["rules"]
    names = [r.get("name") for r in rules]
    assert names == [None, None, "kondense-cohort-0", "kondense-cohort-1"]
    weighted, health, cohort0, cohort1 = rules
    stable_ref, canary_ref = weighted["backendRefs"]
    assert (stable_ref["name"], stable_ref["weight"], canary_ref["name"], canary_ref["weight"]) == (
        "digits-stable", 75, "digits-canary", 25,
    )  # fmt: skip
    assert weighted["matches"] == USER_ROUTE["spec"]["rules"][0]["matches"]  # the user's matches stay
    assert weighted["timeouts"] == {"request": "10s"} and cohort0["timeouts"] == {"request": "10s"}
    assert health["backendRefs"] == weighted["backendRefs"]
    # each cohort rule: the user's rule's match plus the cohort's headers, canary only
    assert [r["backendRefs"] for r in (cohort0, cohort1)] == [
        [{"name": "digits-canary", "port": 8080, "weight": 1}]
    ] * 2
    path = {"type": "PathPrefix", "value": "/v2/models/digits"}
    assert [m["path"] for m in cohort0["matches"]] == [path] * 3
    assert [[h["name"] for h in m["headers"]] for m in cohort0["matches"]] == [
        ["x-cohort"], ["x-team", "x-env"], ["Cookie"],
    ]  # fmt: skip
    assert all(m["method"] == "GET" for m in cohort1["matches"])

    # session affinity: the canary's answers set the cookie; the cookie match takes exactly that value
    (modifier,) = canary_ref["filters"]
    (set_cookie,) = modifier["responseHeaderModifier"]["add"]
    assert status.canary is not None
    variant = next(v for v in status.variants if v.name == status.canary.variant)
    assert variant.artifact is not None
    token = variant.artifact.sha256[:12]
    assert set_cookie == {
        "name": "Set-Cookie",
        "value": f"digits-canary={token}; Max-Age=3600; Path=/; HttpOnly; SameSite=Lax",
    }
    cookie = next(h for m in cohort0["matches"] for h in m["headers"] if h["name"] == "Cookie")
    assert cookie["type"] == "RegularExpression"
    pattern = re.compile(cookie["value"])  # full-match semantics, as Envoy's RE2 matcher
    assert pattern.fullmatch(f"digits-canary={token}")
    assert pattern.fullmatch(f"session=1; digits-canary={token}; theme=dark")
    assert not pattern.fullmatch("digits-canary=000000000000")  # an earlier canary's users
    assert not pattern.fullmatch(f"xdigits-canary={token}")

    assert apply(routes, obj) == "unchanged" and routes.patches == 1  # idempotent: no patch per tick


def test_when_the_canary_ends_only_the_users_rules_remain() -> None:
    spec = spec_with(trafficRouting=GATEWAY, **COHORTS)
    status = canary_status(spec)
    routes = Routes(USER_ROUTE)
    apply(routes, route_objects(spec, status)[0])
    status.phase = Phase.ROLLED_BACK
    (obj,) = route_objects(spec, status)
    assert apply(routes, obj) == "patched"
    route = routes.route()
    assert httproute_violations(route) == []
    assert [r.get("name") for r in route["spec"]["rules"]] == [None, None]
    for rule in route["spec"]["rules"]:
        assert rule["backendRefs"] == [
            {"name": "digits-stable", "port": 8080, "weight": 100},
            {"name": "digits-canary", "port": 8080, "weight": 0},
        ]  # no cookie handed out, nobody sent to the canary


def test_a_plain_weighted_route_validates_too() -> None:
    spec = spec_with(trafficRouting=GATEWAY)
    routes = Routes(USER_ROUTE)
    apply(routes, route_objects(spec, canary_status(spec))[0])
    assert httproute_violations(routes.route()) == []
    assert [r.get("name") for r in routes.route()["spec"]["rules"]] == [None, None]


def test_a_route_the_cohort_rules_would_break_is_refused() -> None:
    cohort = Cohort(spec_with(trafficRouting=GATEWAY, **COHORTS).rollout.match, None, "abc")
    (obj,) = GatewayAPIRouter().objects(Names("digits"), 25, type("R", (), {"name": "shop"})(), 8080, cohort)
    many = [{"matches": [{"path": {"type": "PathPrefix", "value": f"/p{i}"}}]} for i in range(9)]
    with pytest.raises(RouteRefused, match="over the 16 an HTTPRoute may have"):
        route_rules(many, obj["spec"]["rules"], "HTTPRoute ml/shop")
    clash = [{"matches": [{"headers": [{"name": "X-Cohort", "value": "alpha"}]}]}]
    with pytest.raises(RouteRefused, match="already matches header 'x-cohort'"):
        route_rules(clash, obj["spec"]["rules"], "HTTPRoute ml/shop")


def test_the_schema_check_catches_a_broken_route() -> None:
    broken = copy.deepcopy(USER_ROUTE)
    broken["spec"]["rules"][0]["matches"][0]["headers"] = [{"name": "bad name", "value": "x"}]
    broken["spec"]["rules"] = broken["spec"]["rules"] * 9  # 18 rules
    found = {v.message for v in httproute_violations(broken)}
    assert any("is too long" in m or "18" in m for m in found) and any("does not match" in m for m in found)


def test_digits_spec_builder_is_unchanged_by_cohorts() -> None:
    assert digits_spec().rollout.match == [] and digits_spec().rollout.sessionAffinity is None

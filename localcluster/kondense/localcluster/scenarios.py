"""The demo's scenarios: one CompressedModel on a LocalCluster, a fault, an expected outcome.

``run_scenario`` is what ``kondense demo --scenario NAME`` and ``tests/integration/test_local_cluster.py``
both run. Faults live in the local cluster, never in the operator: a kubelet hook adds
``--inject-latency-ms`` to the first canary's pods, the operator process is SIGKILLed, Prometheus is
stopped, a target's params make its Job fail, a deliberately broken target passes a loose offline budget
but not the live agreement gate.
"""

from __future__ import annotations

import copy
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from statistics import fmean
from typing import Any, Protocol

import httpx
import yaml

from kondense.localcluster.cluster import ClusterError, LocalCluster
from kondense.localcluster.kubelet import ExtraArgs

TRACK_LABEL, VARIANT_LABEL = "kondense.dev/track", "kondense.dev/variant"
EXAMPLE_FILES = ("model.onnx", "calib.npz", "eval.npz", "train.npz")
SETTLED = ("Promoted", "RolledBack", "Failed")


class Display(Protocol):
    def update(self, status: Mapping[str, Any], events: list[Any]) -> None: ...

    def say(self, message: str) -> None: ...


@dataclass
class ScenarioContext:
    cluster: LocalCluster
    name: str  # of the CompressedModel
    display: Display
    notes: dict[str, Any] = field(default_factory=dict)

    def status(self) -> dict[str, Any]:
        body = self.cluster.compressed_model(self.name) or {}
        return dict(body.get("status") or {})

    def events(self, reason: str) -> list[Any]:
        return [e for e in self.cluster.events() if e.get("reason") == reason]


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    expected_phase: str
    customize: Callable[[dict[str, Any]], None] = lambda body: None
    fault: Callable[[], ExtraArgs] | None = None
    on_status: Callable[[ScenarioContext, dict[str, Any]], None] | None = None
    verify: Callable[[ScenarioContext, dict[str, Any]], list[str]] = lambda ctx, status: []
    # the operator's extra environment, from the customized CR (e.g. its webhook URL on the allow-list)
    operator_env: Callable[[dict[str, Any]], dict[str, str]] = lambda body: {}


@dataclass
class Outcome:
    scenario: str
    phase: str | None
    expected_phase: str
    problems: list[str]
    seconds: float
    status: dict[str, Any]
    workdir: Path
    prometheus_url: str
    leftover_processes: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.phase == self.expected_phase and not self.problems and not self.leftover_processes


# ---- faults ------------------------------------------------------------------------------------------


class FirstCanaryFault:
    """Kubelet hook: extra server arguments for the canary pods of the first variant put on canary
    (whichever the operator selects), so a fallback variant on the ladder runs clean."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.variant: str | None = None
        self._lock = threading.Lock()

    def __call__(self, pod: Mapping[str, Any], container: Mapping[str, Any]) -> list[str]:
        labels = pod["metadata"].get("labels") or {}
        if labels.get(TRACK_LABEL) != "canary" or container.get("name") != "server":
            return []
        with self._lock:
            if self.variant is None:
                self.variant = labels.get(VARIANT_LABEL)
            return list(self.args) if labels.get(VARIANT_LABEL) == self.variant else []


class BakedStableFault:
    """Kubelet hook: extra server arguments for stable pods serving a variant (not the base model), so a
    canary that ran clean breaches once it is promoted and baking; the reverted base runs clean."""

    def __init__(self, args: list[str]) -> None:
        self.args = args

    def __call__(self, pod: Mapping[str, Any], container: Mapping[str, Any]) -> list[str]:
        labels = pod["metadata"].get("labels") or {}
        if labels.get(TRACK_LABEL) != "stable" or container.get("name") != "server":
            return []
        return list(self.args) if labels.get(VARIANT_LABEL) not in (None, "base") else []


class TrackLatencyFault:
    """Kubelet hook: every serving pod answers ``base_ms`` late, the first canary variant ``slow_ms``
    late: a canary proportionally slower than stable (e.g. 150 ms against 100 ms, 1.5x) while far under
    the absolute p99 limit; the next variant runs at stable's speed."""

    def __init__(self, base_ms: int, slow_ms: int) -> None:
        self.base_ms, self.slow_ms = base_ms, slow_ms
        self.first = FirstCanaryFault([])

    def __call__(self, pod: Mapping[str, Any], container: Mapping[str, Any]) -> list[str]:
        if container.get("name") != "server":
            return []
        labels = pod["metadata"].get("labels") or {}
        slow = False
        if labels.get(TRACK_LABEL) == "canary":
            self.first(pod, container)  # remembers the first canary variant
            slow = labels.get(VARIANT_LABEL) == self.first.variant
        return ["--inject-latency-ms", str(self.slow_ms if slow else self.base_ms)]


# ---- checks ------------------------------------------------------------------------------------------


def _variants(status: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in status.get("variants") or []}


def verify_promoted_artifact(ctx: ScenarioContext, status: dict[str, Any]) -> list[str]:
    """The stable Deployment serves the promoted variant's sha256, and so does every answering pod."""
    problems = []
    stable = status.get("stable") or {}
    variant = _variants(status).get(stable.get("variant") or "")
    if variant is None:
        return [f"no promoted variant in status.stable: {stable}"]
    want = (variant.get("artifact") or {}).get("sha256")
    deployment = ctx.cluster.client.get("Deployment", ctx.cluster.namespace, f"{ctx.name}-stable") or {}
    annotations = ((deployment.get("spec") or {}).get("template") or {}).get("metadata", {}).get(
        "annotations"
    ) or {}
    if annotations.get("kondense.dev/artifact-sha256") != want:
        problems.append(
            f"stable Deployment template serves {annotations.get('kondense.dev/artifact-sha256')}, not {want}"
        )
    url = ctx.cluster.service_url(f"{ctx.name}-stable", _serving_port(ctx))
    served = set()
    try:
        for _ in range(8):  # round-robin: every stable pod answers at least once
            body = httpx.get(f"{url}/v2/models/{ctx.name}", timeout=5).json()
            served.add((body["parameters"]["sha256"], body["parameters"]["verified"]))
    except (httpx.HTTPError, KeyError, ValueError, TypeError) as exc:
        return [*problems, f"cannot read the stable pods' model metadata at {url}: {exc}"]
    if served != {(want, True)}:
        problems.append(f"stable pods serve {sorted(served)}, expected only the verified {want}")
    return problems


def _serving_port(ctx: ScenarioContext) -> int:
    body = ctx.cluster.compressed_model(ctx.name) or {}
    return int(((body.get("spec") or {}).get("serving") or {}).get("port") or 8080)


def verify_happy(ctx: ScenarioContext, status: dict[str, Any]) -> list[str]:
    problems = verify_promoted_artifact(ctx, status)
    if len(ctx.events("Promoted")) != 1:
        problems.append(f"{len(ctx.events('Promoted'))} Promoted events, expected exactly 1")
    return problems


def verify_breach(sli: str) -> Callable[[ScenarioContext, dict[str, Any]], list[str]]:
    def verify(ctx: ScenarioContext, status: dict[str, Any]) -> list[str]:
        checks = (status.get("canary") or {}).get("checks") or []
        rolled = [n for n, v in _variants(status).items() if v.get("phase") == "RolledBack"]
        breaches = [
            c for c in checks if c.get("sli") == sli and not c.get("passed") and c.get("value") is not None
        ]
        problems = []
        if not rolled:
            problems.append("no variant was rolled back")
        if not any(c.get("variant") in rolled and c["value"] > c["threshold"] for c in breaches):
            problems.append(f"no failed {sli} check with value > threshold in status.canary.checks: {checks}")
        if status.get("phase") == "Promoted":
            problems += verify_promoted_artifact(ctx, status)
            if (status.get("stable") or {}).get("variant") in rolled:
                problems.append("the rolled-back variant was promoted")
        return problems

    return verify


def verify_outage(ctx: ScenarioContext, status: dict[str, Any]) -> list[str]:
    problems = []
    if ctx.events("Promoted") or any(v.get("phase") == "Promoted" for v in _variants(status).values()):
        problems.append("a variant was promoted while Prometheus was down")
    checks = (status.get("canary") or {}).get("checks") or []
    if not any(c.get("value") is None and not c.get("passed") for c in checks):
        problems.append("no check without data recorded")
    reasons = {v.get("reason") for v in _variants(status).values() if v.get("phase") == "RolledBack"}
    if "NoData" not in reasons:
        problems.append(f"no variant rolled back for lack of data (reasons: {reasons})")
    if not ctx.events("CheckFailed"):
        problems.append("no tolerated failed check (hold) before the rollback")
    return problems


def verify_restart(ctx: ScenarioContext, status: dict[str, Any]) -> list[str]:
    problems = verify_happy(ctx, status)
    killed = ctx.notes.get("killed")
    if killed is None:
        return [*problems, "the operator was never killed mid-canary"]
    after = ctx.notes.get("after_restart") or []
    if not after:
        problems.append("no canary state observed after the restart")
    for canary in after:
        if canary.get("startedAt") != killed["startedAt"] or canary.get("variant") != killed["variant"]:
            problems.append(f"the canary restarted after the operator did: {canary} vs {killed}")
            break
        if int(canary.get("step") or 0) < killed["step"]:
            problems.append(f"the canary went back from step {killed['step']} to {canary.get('step')}")
            break
    return problems


def verify_job_failure(ctx: ScenarioContext, status: dict[str, Any]) -> list[str]:
    problems = verify_promoted_artifact(ctx, status) if status.get("phase") == "Promoted" else []
    bad = _variants(status).get("bad-params") or {}
    if bad.get("phase") != "Failed":
        problems.append(f"variant bad-params is {bad.get('phase')}, expected Failed")
    if "no such node" not in (bad.get("message") or ""):
        problems.append(f"variant bad-params has no clear message: {bad.get('message')!r}")
    others = [v for n, v in _variants(status).items() if n != "bad-params"]
    if not any(v.get("phase") in ("Promoted", "Succeeded", "RolledBack") for v in others):
        problems.append("no other variant went on")
    return problems


def _stable_serves(ctx: ScenarioContext, sha: str) -> str | None:
    """Why the stable pods do not (yet) all answer with the verified artifact ``sha`` (None: they do)."""
    deployment = ctx.cluster.client.get("Deployment", ctx.cluster.namespace, f"{ctx.name}-stable") or {}
    template = ((deployment.get("spec") or {}).get("template") or {}).get("metadata", {})
    if (template.get("annotations") or {}).get("kondense.dev/artifact-sha256") != sha:
        return "the stable Deployment's template is not on it"
    url = ctx.cluster.service_url(f"{ctx.name}-stable", _serving_port(ctx))
    served = set()
    try:
        for _ in range(8):
            body = httpx.get(f"{url}/v2/models/{ctx.name}", timeout=5).json()
            served.add((body["parameters"]["sha256"], body["parameters"]["verified"]))
    except (httpx.HTTPError, KeyError, ValueError, TypeError) as exc:
        return f"cannot read the stable pods' model metadata: {exc}"
    return None if served == {(sha, True)} else f"stable pods serve {sorted(served)}"


def _prometheus_value(ctx: ScenarioContext, promql: str) -> float | None:
    try:
        body = httpx.get(
            f"{ctx.cluster.prometheus.url}/api/v1/query", params={"query": promql}, timeout=5
        ).json()
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0
    except (httpx.HTTPError, KeyError, ValueError, TypeError, IndexError):
        return None


def _timestamp(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def verify_bake_revert(ctx: ScenarioContext, status: dict[str, Any]) -> list[str]:
    """Promoted into a bake, breached, reverted: stable back on the base artifact, no failed request."""
    problems = []
    bake = status.get("bake") or {}
    baked = bake.get("variant")
    if bake.get("result") != "Reverted":
        problems.append(f"the bake was not reverted: {bake}")
    if _variants(status).get(baked or "", {}).get("reason") not in ("BakeBreach", "BakeAbort"):
        problems.append(
            f"variant {baked} has no bake breach as its reason: {_variants(status).get(baked or '')}"
        )
    breaches = [c for c in bake.get("checks") or [] if not c.get("passed") and c.get("value") is not None]
    if not any(c.get("sli") == "p99LatencyMs" and c["value"] > c["threshold"] for c in breaches):
        problems.append(f"no failed p99LatencyMs check in status.bake.checks: {bake.get('checks')}")
    previous = ((bake.get("previous") or {}).get("artifact") or {}).get("sha256")
    stable = ((status.get("stable") or {}).get("artifact") or {}).get("sha256")
    if previous is None or stable != previous or (status.get("stable") or {}).get("variant") is not None:
        problems.append(f"status.stable is not the previous (base) artifact: {status.get('stable')}")
        return problems
    # the stable Deployment follows status at once; its pods roll with surge (never below ready)
    reverted = time.monotonic()
    why = _stable_serves(ctx, previous)
    while why is not None and time.monotonic() - reverted < 120:
        time.sleep(0.25)
        why = _stable_serves(ctx, previous)
    if why is not None:
        problems.append(f"stable not back on the base artifact {previous[:12]}: {why}")
    # Events are posted after the status write they report (checked once the revert has settled)
    if not ctx.events("Baking") or not ctx.events("Reverted"):
        problems.append("no Baking then Reverted Events")
    if ctx.events("Promoted"):
        problems.append("a Promoted Event although the bake breached")
    decided = _timestamp(bake.get("finishedAt"))
    if decided is not None:  # from the revert decision (the operator's clock is this machine's)
        ctx.notes["revert_settled_s"] = round((datetime.now(UTC) - decided).total_seconds(), 1)
    ctx.display.say(
        f"stable serves the base artifact again {ctx.notes['revert_settled_s']} s after the revert"
    )
    sel = f'namespace="{ctx.cluster.namespace}",model="{ctx.name}"'
    # the pods of the reverted variant are gone (their series stale): the largest count each series had
    failed = _prometheus_value(
        ctx, f'sum(max_over_time(kondense_requests_total{{{sel},code!~"2.."}}[15m])) or vector(0)'
    )
    served = _prometheus_value(
        ctx, f'sum(max_over_time(kondense_requests_total{{{sel},variant="stable"}}[15m]))'
    )
    if failed is None or failed > 0:
        problems.append(f"failed requests during the run: {failed}")
    if not served:
        problems.append("no request reached stable (no load during the bake)")
    return problems


def relative_latency_problems(status: Mapping[str, Any]) -> list[str]:
    """The slower canary was rolled back by the relative gate alone (its absolute p99 checks passed,
    the ratio past the gate with p < alpha); the same-speed one promoted, judged on real readings."""
    checks = (status.get("canary") or {}).get("checks") or []
    rolled = [n for n, v in _variants(status).items() if v.get("phase") == "RolledBack"]
    problems = []
    if len(rolled) != 1:
        return [f"expected exactly one rolled-back variant, got {rolled}"]
    mine = [c for c in checks if c.get("variant") == rolled[0]]
    ratios = [c for c in mine if c.get("sli") == "p99LatencyRatio" and not c.get("passed") and c.get("value")]
    if not any(
        c["value"] > c["threshold"] and (c.get("pValue") or 1) < (c.get("alpha") or 0) for c in ratios
    ):
        problems.append(f"no significant p99LatencyRatio breach for {rolled[0]}: {mine}")
    absolute = [c for c in mine if c.get("sli") == "p99LatencyMs" and c.get("value") is not None]
    if not absolute or not all(c.get("passed") for c in absolute):
        problems.append(f"{rolled[0]} was not under the absolute p99 limit: {absolute}")
    promoted = (status.get("stable") or {}).get("variant")
    if status.get("phase") != "Promoted" or promoted is None or promoted == rolled[0]:
        return [
            *problems,
            f"the same-speed variant was not promoted (phase {status.get('phase')}, stable {promoted})",
        ]
    # The outcome is judged: promoted, at least one ratio really read, and no check of it failed with a
    # real reading. A no-data reading (e.g. "canary has 16 requests, need 20") says nothing about speed:
    # neither a false rollback nor a pass, so it is ignored.
    of_promoted = [c for c in checks if c.get("variant") == promoted]
    read = [c for c in of_promoted if c.get("sli") == "p99LatencyRatio" and c.get("value") is not None]
    failed = [c for c in of_promoted if not c.get("passed") and c.get("value") is not None]
    if not read:
        problems.append(f"the same-speed variant {promoted} never had its p99 ratio read: {of_promoted}")
    if failed:
        problems.append(f"the same-speed variant {promoted} failed checks on real readings: {failed}")
    return problems


def verify_relative_latency(ctx: ScenarioContext, status: dict[str, Any]) -> list[str]:
    problems = relative_latency_problems(status)
    return problems + verify_promoted_artifact(ctx, status)


def drift_problems(status: Mapping[str, Any]) -> list[str]:
    """The first canary agreed with stable on argmax (its live agreement checks passed on real readings)
    but was rolled back by a significant confidence shift; the next, unscaled, was promoted with no
    check failed on a real reading."""
    checks = (status.get("canary") or {}).get("checks") or []
    rolled = [n for n, v in _variants(status).items() if v.get("phase") == "RolledBack"]
    if len(rolled) != 1:
        return [f"expected exactly one rolled-back variant, got {rolled}"]
    problems = []
    mine = [c for c in checks if c.get("variant") == rolled[0]]
    shifts = [c for c in mine if c.get("sli") == "confidencePSI" and not c.get("passed") and c.get("value")]
    if not any(
        c["value"] > c["threshold"] and (c.get("pValue") or 1) < (c.get("alpha") or 0) for c in shifts
    ):
        problems.append(f"no significant confidencePSI breach for {rolled[0]}: {mine}")
    # Agreement over the canary's whole time, not in every window: int8 really answers a few inputs
    # differently (0.2% of the held-out set), and a short window's reading can cross the threshold by
    # chance (one of 38 samples is 0.026 > 0.02; seen once in CI). The readings' mean must be within it.
    agreement = [c for c in mine if c.get("sli") == "accuracyDelta" and c.get("value") is not None]
    if not agreement or fmean(c["value"] for c in agreement) > agreement[0]["threshold"]:
        problems.append(f"{rolled[0]} did not agree with stable on argmax: {agreement}")
    promoted = (status.get("stable") or {}).get("variant")
    if status.get("phase") != "Promoted" or promoted is None or promoted == rolled[0]:
        return [
            *problems,
            f"the unscaled variant was not promoted (phase {status.get('phase')}, stable {promoted})",
        ]
    failed = [
        c
        for c in checks
        if c.get("variant") == promoted and not c.get("passed") and c.get("value") is not None
    ]
    if failed:
        problems.append(f"the unscaled variant {promoted} failed checks on real readings: {failed}")
    return problems


def verify_drift(ctx: ScenarioContext, status: dict[str, Any]) -> list[str]:
    return drift_problems(status) + verify_promoted_artifact(ctx, status)


def confidence_shift_gate(body: dict[str, Any]) -> None:
    """The drift gate alone (the p99 limit far above any load noise). Three failed checks tolerated: on
    a loaded machine the next variant's pods may not serve at its first intervals, and its first window
    holds fewer observations (no data each time); the scaled variant fails every interval anyway."""
    body["spec"]["rollout"]["failureLimit"] = 3
    analysis = body["spec"]["rollout"]["analysis"]
    analysis["confidenceShift"] = {"maxPSI": 0.25, "minSamplesPerSide": 30}
    analysis["p99LatencyMs"] = {"max": 500}  # a loaded machine's latency is not what this shows


def relative_latency_gate(body: dict[str, Any]) -> None:
    """Two failed checks tolerated: on a loaded machine the next variant's pods may not serve (no data)
    at its first intervals; the slower one fails every interval, so it is still rolled back."""
    body["spec"]["rollout"]["failureLimit"] = 2
    analysis = body["spec"]["rollout"]["analysis"]
    analysis["p99LatencyMs"] = {"max": 500, "maxRatioToStable": 1.2}
    analysis["minSamplesPerSide"] = 20


def bake_with_slow_stable(body: dict[str, Any]) -> None:
    """A bake long enough that the breach lands inside it."""
    body["spec"]["rollout"]["bake"] = "60s"


# ---- actions -----------------------------------------------------------------------------------------


def kill_operator_mid_canary(ctx: ScenarioContext, status: dict[str, Any]) -> None:
    canary = status.get("canary") or {}
    if "killed" not in ctx.notes:
        if status.get("phase") != "Canary" or int(canary.get("step") or 0) < 1 or canary.get("promoting"):
            return
        ctx.notes["killed"] = {k: canary.get(k) for k in ("variant", "step", "startedAt", "weight")}
        ctx.display.say(
            f"SIGKILL to the operator at canary step {canary['step']} ({canary.get('weight')}% live)"
        )
        ctx.cluster.kill_operator()
        time.sleep(3)
        ctx.display.say("operator restarted")
        ctx.cluster.start_operator()
    elif status.get("phase") == "Canary" and canary:
        ctx.notes.setdefault("after_restart", []).append(
            {k: canary.get(k) for k in ("variant", "step", "startedAt")}
        )


def stop_prometheus_during_analysis(ctx: ScenarioContext, status: dict[str, Any]) -> None:
    canary = status.get("canary") or {}
    if "stopped" in ctx.notes or status.get("phase") != "Canary" or not canary.get("weight"):
        return
    ctx.notes["stopped"] = True
    ctx.display.say(f"Prometheus stopped while canary {canary.get('variant')} is at {canary.get('weight')}%")
    ctx.cluster.prometheus.stop()


# ---- steering (issue 14): manual approval, a failing webhook -----------------------------------------


def approve_each_wait(ctx: ScenarioContext, status: dict[str, Any]) -> None:
    """What a person with `kubectl kondense approve` does: each time the rollout waits for approval,
    look twice (the weight holds), then approve with a fresh nonce on the resource's annotation."""
    canary = status.get("canary") or {}
    if status.get("phase") != "WaitingForApproval":
        return
    key = f"{canary.get('variant')}@{canary.get('step')}"
    seen = ctx.notes.setdefault("waits", {})
    seen.setdefault(key, []).append(canary.get("requestedWeight"))
    if len(seen[key]) == 2:
        nonce = f"demo-{len(seen)}-{int(time.time())}"
        ctx.display.say(f"waiting for approval at {canary.get('requestedWeight')}%: approving ({nonce})")
        ctx.cluster.client.patch(
            "CompressedModel", ctx.cluster.namespace, ctx.name,
            {"metadata": {"annotations": {"kondense.dev/approve": nonce}}},
        )  # fmt: skip


def verify_manual_approval(ctx: ScenarioContext, status: dict[str, Any]) -> list[str]:
    problems = verify_happy(ctx, status)
    waits = ctx.notes.get("waits") or {}
    if len(waits) < 2:
        problems.append(f"expected a wait before the step up and before promotion, saw {sorted(waits)}")
    for key, weights in waits.items():
        if len(set(weights)) != 1:
            problems.append(f"the weight moved while waiting for approval at {key}: {weights}")
    if len(ctx.events("Approved")) != len(waits):
        problems.append(f"{len(ctx.events('Approved'))} Approved events for {len(waits)} waits")
    if not (status.get("intents") or {}).get("approve"):
        problems.append("no approval acknowledged in status.intents")
    return problems


class FailingReceiver:
    """A webhook receiver on loopback that answers 503 to everything (lives as long as the process)."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = b"smoke tests failing"
                self.send_response(503)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/smoke"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def add_failing_webhook(body: dict[str, Any]) -> None:
    receiver = FailingReceiver()
    body["spec"]["rollout"]["webhooks"] = [
        {"name": "smoke", "type": "rollout", "url": receiver.url, "timeout": "2s"}
    ]


def allow_webhooks(body: dict[str, Any]) -> dict[str, str]:
    """The receivers on loopback are not Services of the CR's namespace: the operator allows them by URL."""
    urls = [hook["url"] for hook in body["spec"]["rollout"].get("webhooks") or []]
    return {"KONDENSE_WEBHOOK_ALLOWED_URLS": ",".join(urls)}


def verify_webhook_halt(ctx: ScenarioContext, status: dict[str, Any]) -> list[str]:
    problems = []
    if ctx.events("Promoted") or any(v.get("phase") == "Promoted" for v in _variants(status).values()):
        problems.append("a variant was promoted although its rollout webhook failed")
    checks = (status.get("canary") or {}).get("checks") or []
    named = [c for c in checks if c.get("sli") == "webhook/smoke" and not c.get("passed")]
    if not named or "answered 503: smoke tests failing" not in (named[-1].get("message") or ""):
        problems.append(f"no failed check naming the webhook and its answer: {checks[-3:]}")
    rolled = [v for v in _variants(status).values() if v.get("phase") == "RolledBack"]
    if not rolled or not all("rollout webhook smoke" in (v.get("message") or "") for v in rolled):
        problems.append(f"rolled back variants do not name the webhook: {rolled}")
    return problems


# ---- mirror first (issue 13) ----------------------------------------------------------------------


def mirror_first(body: dict[str, Any]) -> None:
    """The broken student (fails live agreement) and mirror first: each canary answers only copies of
    live requests for 15 s (at least 50 of them) before its first step."""
    add_broken_target(body)
    body["spec"]["rollout"]["mirror"] = {"duration": "15s", "minSamples": 50, "percentage": 100}


def watch_mirroring(ctx: ScenarioContext, status: dict[str, Any]) -> None:
    """While a canary mirrors: remember its pods (name and Service endpoint), and what the model's
    Service (user traffic) and the canary's Service (mirrored copies) have answered through them."""
    canary = status.get("canary") or {}
    variant = canary.get("variant")
    checks = ctx.notes.setdefault("checks", {})  # status keeps the last MAX_CHECKS only
    for check in canary.get("checks") or []:
        checks[(check.get("variant"), check.get("time"), check.get("sli"))] = check
    if status.get("phase") != "Mirroring" or not variant:
        return
    mirrored = ctx.notes.setdefault("mirrored", {})
    seen = mirrored.setdefault(variant, {"pods": {}, "user": 0, "copies": 0})
    selector = f"{TRACK_LABEL}=canary,{VARIANT_LABEL}={variant}"
    for pod in ctx.cluster.client.list("Pod", ctx.cluster.namespace, label_selector=selector):
        endpoint = ctx.cluster.pod_endpoint(pod["metadata"]["uid"], "http")
        if endpoint is not None:
            seen["pods"][pod["metadata"]["name"]] = endpoint
    port, network = _serving_port(ctx), ctx.cluster.network
    users = network.answered(ctx.name, ctx.cluster.namespace, port)
    copies = network.answered(f"{ctx.name}-canary", ctx.cluster.namespace, port)
    ends = set(seen["pods"].values())
    seen["user"] = max(seen["user"], sum(n for e, n in users.items() if e in ends))
    seen["copies"] = max(seen["copies"], sum(n for e, n in copies.items() if e in ends))


def verify_mirror_accuracy(ctx: ScenarioContext, status: dict[str, Any]) -> list[str]:
    """The disagreeing variant was rolled back during mirroring, before any user request reached it
    (counted at the Services and by its own servers in Prometheus); the next one mirrored, then stepped."""
    problems = []
    variants = _variants(status)
    broken = variants.get("broken-student") or {}
    if broken.get("phase") != "RolledBack" or not (broken.get("message") or "").startswith(
        "during mirroring"
    ):
        problems.append(f"broken-student was not rolled back during mirroring: {broken}")
    watch_mirroring(ctx, status)
    checks = [c for c in (ctx.notes.get("checks") or {}).values() if c.get("variant") == "broken-student"]
    if not any(
        c.get("sli") == "accuracyDelta" and c.get("value") is not None and c["value"] > c["threshold"]
        for c in checks
    ):
        problems.append(f"no accuracyDelta breach recorded for broken-student: {checks}")
    seen = (ctx.notes.get("mirrored") or {}).get("broken-student")
    if not seen or not seen["pods"]:
        return [*problems, "broken-student was never seen mirroring with its pods"]
    if seen["user"] != 0:
        problems.append(f"the model's Service sent {seen['user']} user requests to broken-student's pods")
    if seen["copies"] <= 0:
        problems.append("the canary Service carried no mirrored copy to broken-student's pods")
    pods = "|".join(sorted(seen["pods"]))
    sel = f'namespace="{ctx.cluster.namespace}",model="{ctx.name}",variant="canary",pod=~"{pods}"'
    user = _prometheus_value(ctx, f"sum(max_over_time(kondense_requests_total{{{sel}}}[15m])) or vector(0)")
    copies = _prometheus_value(ctx, f"sum(max_over_time(kondense_mirrored_requests_total{{{sel}}}[15m]))")
    disagree = _prometheus_value(
        ctx,
        f'sum(max_over_time(kondense_mirror_comparisons_total{{namespace="{ctx.cluster.namespace}",'
        f'model="{ctx.name}",canary="broken-student",result="disagree"}}[15m]))',
    )
    ctx.notes["counts"] = {"service_user": seen["user"], "service_copies": seen["copies"],
                           "prometheus_user": user, "prometheus_copies": copies, "disagree": disagree}  # fmt: skip
    ctx.display.say(f"broken-student while mirroring: {ctx.notes['counts']}")
    if user != 0:
        problems.append(f"broken-student's servers counted {user} user requests (kondense_requests_total)")
    if not copies:
        problems.append(f"broken-student's servers counted no mirrored request ({copies})")
    if not disagree:
        problems.append(f"stable counted no disagreement with broken-student ({disagree})")
    promoted = (status.get("stable") or {}).get("variant")
    mirror = (status.get("canary") or {}).get("mirror") or {}
    if status.get("phase") == "Promoted":
        if promoted not in (ctx.notes.get("mirrored") or {}) or mirror.get("result") != "Passed":
            problems.append(f"{promoted} was promoted without passing mirroring first: {mirror}")
        problems += verify_promoted_artifact(ctx, status)
    if not ctx.events("MirrorFailed"):
        problems.append("no MirrorFailed Event")
    return problems


# ---- the CRs -----------------------------------------------------------------------------------------


def quick_profile(body: dict[str, Any]) -> None:
    """A shorter run of the same example (tests, ``--quick``): two fast targets, two replicas, two steps
    of 5 s. The example as written takes a few minutes on 2 cores."""
    spec = body["spec"]
    spec["targets"] = [t for t in spec["targets"] if t["name"] in ("int8", "fp16")]
    spec["serving"]["replicas"] = 2
    rollout = spec["rollout"]
    rollout["steps"] = [50, 100]
    rollout["interval"] = "5s"
    analysis = rollout["analysis"]
    analysis.update(window="10s", minRequests=5)
    analysis["loadTest"] = {"rps": 20}


def add_broken_target(body: dict[str, Any]) -> None:
    """A tiny MLP student of the CNN: far smaller than anything else (so ``prefer: smallest`` canaries
    it first) and far less accurate; its own loose budget lets it pass the offline gate."""
    body["spec"]["targets"].insert(0, {
        "name": "broken-student", "technique": "distill", "maxAccuracyDelta": 0.95,
        "params": {"hiddenSizes": [16], "epochs": 3},
    })  # fmt: skip


def add_bad_params_target(body: dict[str, Any]) -> None:
    """Valid by the schema, refused by the Job: a node to keep in float32 that the model does not have."""
    body["spec"]["targets"].append(
        {"name": "bad-params", "technique": "static-int8", "params": {"nodesToExclude": ["no-such-node"]}}
    )


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("happy", "compress, canary step by step, promote", "Promoted", verify=verify_happy),
        Scenario(
            "latency",
            "the first canary answers 80 ms late: p99 breach, weight 0, next variant",
            "Promoted",
            fault=lambda: FirstCanaryFault(["--inject-latency-ms", "80"]),
            verify=verify_breach("p99LatencyMs"),
        ),
        Scenario(
            "accuracy",
            "a broken variant passes its loose offline budget, fails live agreement: rollback",
            "Promoted",
            customize=add_broken_target,
            verify=verify_breach("accuracyDelta"),
        ),
        Scenario(
            "restart",
            "the operator is SIGKILLed mid-canary and restarted: same step, one promotion",
            "Promoted",
            on_status=kill_operator_mid_canary,
            verify=verify_restart,
        ),
        Scenario(
            "prometheus-outage",
            "Prometheus stops during analysis: hold, then roll back; never promote",
            "RolledBack",
            on_status=stop_prometheus_during_analysis,
            verify=verify_outage,
        ),
        Scenario(
            "manual-approval",
            "rollout.approval everyStep: the canary waits at each step until approved, then promotes",
            "Promoted",
            customize=lambda body: body["spec"]["rollout"].update(approval="everyStep"),
            on_status=approve_each_wait,
            verify=verify_manual_approval,
        ),
        Scenario(
            "webhook-halt",
            "a rollout webhook answers 503: failed checks naming it, rollback, never promoted",
            "RolledBack",
            customize=add_failing_webhook,
            verify=verify_webhook_halt,
            operator_env=allow_webhooks,
        ),
        Scenario(
            "bake-revert",
            "promoted into a bake, the variant answers 80 ms late as stable: reverted to the base at once",
            "RolledBack",
            customize=bake_with_slow_stable,
            fault=lambda: BakedStableFault(["--inject-latency-ms", "80"]),
            verify=verify_bake_revert,
        ),
        Scenario(
            "relative-latency",
            "the first canary is 1.5x slower than stable (150 ms vs 100 ms, limit 500 ms): rolled back by "
            "the relative gate; the next, as fast as stable, is promoted",
            "Promoted",
            customize=relative_latency_gate,
            fault=lambda: TrackLatencyFault(100, 150),
            verify=verify_relative_latency,
        ),
        Scenario(
            "mirror-accuracy",
            "mirror first: a variant that disagrees with stable is caught on mirrored copies and rolled "
            "back before any user request reached it; the next mirrors, steps and is promoted",
            "Promoted",
            customize=mirror_first,
            on_status=watch_mirroring,
            verify=verify_mirror_accuracy,
        ),
        Scenario(
            "drift",
            "the first canary's logits are scaled by 0.25 (argmax kept, confidences shifted): live "
            "agreement passes, the confidence-shift gate rolls it back; the next variant is promoted",
            "Promoted",
            customize=confidence_shift_gate,
            fault=lambda: FirstCanaryFault(["--inject-logit-scale", "0.25"]),
            verify=verify_drift,
        ),
        Scenario(
            "job-failure",
            "one target's params make its Job fail: that variant Failed, the others go on",
            "Promoted",
            customize=add_bad_params_target,
            verify=verify_job_failure,
        ),
    )
}


# ---- running one -------------------------------------------------------------------------------------


def load_example_cr(path: Path) -> dict[str, Any]:
    try:
        body = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ClusterError(f"cannot read {path}: {exc}") from None
    if not isinstance(body, dict) or body.get("kind") != "CompressedModel":
        raise ClusterError(f"{path} is not a CompressedModel")
    return body


def install_example(
    example_dir: Path, cluster: LocalCluster, claim: str = "models", folder: str = "digits"
) -> None:
    """The example model and data onto the claim, where the CR's pvc:// URIs point."""
    target = cluster.paths.pvc / claim / folder
    target.mkdir(parents=True, exist_ok=True)
    for name in EXAMPLE_FILES:
        shutil.copy2(example_dir / name, target / name)


def run_scenario(
    scenario: Scenario,
    workdir: Path,
    example_dir: Path,
    cr_file: Path,
    display: Display,
    *,
    quick: bool = False,
    timeout_s: float = 900.0,
    bin_dirs: tuple[str, ...] = (),
    cluster_started: Callable[[LocalCluster], None] | None = None,
) -> Outcome:
    body = copy.deepcopy(load_example_cr(cr_file))
    if quick:
        quick_profile(body)
    scenario.customize(body)
    name = body["metadata"]["name"]
    started = time.monotonic()
    fault = scenario.fault() if scenario.fault else None
    cluster = LocalCluster(
        workdir, extra_args=fault, bin_dirs=bin_dirs, operator_env=scenario.operator_env(body)
    )
    status: dict[str, Any] = {}
    problems: list[str] = []
    try:
        cluster.start()
        if cluster_started:
            cluster_started(cluster)
        install_example(example_dir, cluster)
        cluster.apply(body)
        ctx = ScenarioContext(cluster, name, display)
        deadline = time.monotonic() + timeout_s
        while True:
            status = ctx.status()
            display.update(status, cluster.events())
            if scenario.on_status:
                scenario.on_status(ctx, status)
            if status.get("phase") in SETTLED and not (status.get("canary") or {}).get("promoting"):
                break
            if not cluster.operator_alive():
                problems.append(f"the operator exited; see {cluster.paths.operator_log}")
                break
            if time.monotonic() > deadline:
                problems.append(f"no final phase after {timeout_s:.0f}s (phase {status.get('phase')})")
                break
            time.sleep(0.5)
        if not problems:
            problems += scenario.verify(ctx, status)
        display.update(status, cluster.events())
    finally:
        cluster.stop()
    leftovers = _leftovers(cluster.started_pids())
    return Outcome(
        scenario.name, status.get("phase"), scenario.expected_phase, problems, time.monotonic() - started,
        status, cluster.paths.workdir, cluster.prometheus.url, leftovers,
    )  # fmt: skip


LEFTOVER_GRACE_S = 10.0
"""How long a stopped pod's helper processes (e.g. a server's decode worker, which exits when it reads
EOF from its dead server) may take to go before they count as left running."""


def _leftovers(pgids: list[int], grace_s: float = LEFTOVER_GRACE_S) -> list[int]:
    deadline = time.monotonic() + grace_s
    while True:
        alive = [pgid for pgid in pgids if _alive(pgid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _alive(pgid: int) -> bool:
    """Is any process of the group still there (every pod container and operator run is a group)?"""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""The dashboard's pages from a CompressedModel, its Events and SLI series (pure: no cluster, no
network). The HTML is parsed back with the standard library's parser, so the assertions read what a
browser would get: one Pareto point per evaluated variant, the weight steps and every decision."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest

from kondense.dashboard import render
from kondense.dashboard.progress import compression_progress, format_seconds
from kondense.dashboard.timeline import check_points, decisions, time_range, weight_steps
from kondense_testing.builders import digits_body

T0 = datetime(2026, 12, 2, 14, 0, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def event(
    reason: str, message: str, seconds: float, kind: str = "Normal", name: str = "digits"
) -> dict[str, Any]:
    return {
        "type": kind,
        "reason": reason,
        "message": message,
        "lastTimestamp": at(seconds),
        "involvedObject": {"kind": "CompressedModel", "name": name, "namespace": "default"},
        "metadata": {"name": f"{name}.{reason}.{seconds}", "namespace": "default"},
    }


def variant(
    name: str, phase: str, size: float | None, delta: float | None, p50: float | None
) -> dict[str, Any]:
    metrics = {"sizeRatio": size, "accuracyDelta": delta, "p50Ms": p50, "p99Ms": p50 and p50 * 2}
    return {"name": name, "phase": phase, "technique": name, "metrics": metrics if size is not None else None}


def check(
    seconds: float, sli: str, value: float | None, threshold: float, passed: bool, name: str = "int8"
) -> dict[str, Any]:
    return {"time": at(seconds), "variant": name, "sli": sli, "value": value, "threshold": threshold,
            "window": "10s", "passed": passed, "message": None if passed else f"{sli} breach"}  # fmt: skip


def promoted() -> dict[str, Any]:
    """A digits rollout that rolled fp16 back on latency, then promoted int8 (steps 50 %, 100 %)."""
    body = digits_body()
    body["spec"]["rollout"]["steps"] = [50, 100]
    body["metadata"].update(namespace="default", uid="u1")
    body["status"] = {
        "phase": "Promoted",
        "message": "int8 is stable",
        "hashes": {"run": "abcdef123456"},
        "base": {"name": "base", "phase": "Succeeded"},
        "variants": [
            variant("int8", "Promoted", 0.27, 0.002, 0.05),
            variant("fp16", "RolledBack", 0.51, 0.0, 0.2),
            variant("dynamic-int8", "Rejected", 0.30, 0.04, 0.4),
            variant("slim-int8", "Failed", None, None, None),
        ],
        "selectedVariant": "int8",
        "stable": {"variant": "int8"},
        "canary": {
            "variant": "int8",
            "step": 1,
            "weight": 0,
            "checks": [
                check(20, "p99LatencyMs", 80.0, 50, False, "fp16"),
                check(40, "p99LatencyMs", 12.0, 50, True),
                check(40, "errorRate", 0.0, 0.01, True),
                check(50, "p99LatencyMs", 11.0, 50, True),
            ],
        },
        "conditions": [{"type": "CanaryHealthy", "status": "True", "reason": "Pass", "message": "ok"}],
    }
    return body


EVENTS = [
    event("Compressing", "compressing 4 targets", 0),
    event("CanaryStarted", "fp16 selected (pass); fallbacks: int8", 10),
    event("RolledBack", "fp16: p99LatencyMs 80 > 50 over 10s", 21, "Warning"),
    event("CanaryStarted", "int8 (next on the ladder)", 22),
    event("CanaryStep", "int8 → 100%: p99LatencyMs=12<=50 over 10s", 41),
    event("Promoting", "int8 passed every step", 51),
    event("Promoted", "int8 is now stable (0123456789ab)", 55),
]


class Elements(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def having(self, tag: str, css_class: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and css_class in (a.get("class") or "").split()]


def model_page(obj: dict[str, Any], events: list[dict[str, Any]], **view: Any) -> Elements:
    now = T0 + timedelta(seconds=60)
    page = render.model_page(
        render.ModelView(
            obj=obj, events=events, progress=compression_progress(obj, [], now), now=now, **view
        ),
        refresh=5,
    )
    return Elements(page)


def test_one_pareto_point_per_evaluated_variant_and_the_selected_one_marked() -> None:
    page = model_page(promoted(), EVENTS)
    points = page.having("circle", "variant")
    assert sorted(p["data-variant"] for p in points) == ["dynamic-int8", "fp16", "int8"]  # type: ignore[type-var]
    assert [p["data-variant"] for p in page.having("circle", "selected")] == ["int8"]
    assert "slim-int8" in "".join(page.text)  # named as not plotted, no metrics
    radius = {p["data-variant"]: float(p["r"] or 0) for p in points}
    assert radius["int8"] < radius["fp16"] < radius["dynamic-int8"]  # marker size grows with p50


def test_pareto_frontier_keeps_only_the_undominated_variants() -> None:
    points, missing = render.pareto_points(promoted()["status"])
    frontier = {p.name for p in points if p.frontier}
    # int8 is smaller than fp16 but less accurate; dynamic-int8 is larger and less accurate than int8
    assert frontier == {"int8", "fp16"}
    assert missing == ["slim-int8"]


def test_weight_steps_follow_the_decision_events() -> None:
    steps = weight_steps(promoted()["spec"], EVENTS)
    assert [(s.weight, s.reason) for s in steps] == [
        (50, "CanaryStarted"),
        (0, "RolledBack"),
        (50, "CanaryStarted"),
        (100, "CanaryStep"),
    ]  # Promoted after a 100 % step changes nothing


def test_timeline_marks_every_decision_with_its_reason_and_the_steps() -> None:
    page = model_page(promoted(), EVENTS)
    assert [g["data-weight"] for g in page.having("g", "weight-step")] == ["50", "0", "50", "100"]
    reasons = [g["data-reason"] for g in page.having("g", "decision")]
    assert reasons == ["CanaryStarted", "RolledBack", "CanaryStarted", "CanaryStep", "Promoting", "Promoted"]
    text = " ".join(page.text)
    assert "Promoted: int8 is now stable (0123456789ab)" in text
    assert "RolledBack: fp16: p99LatencyMs 80 > 50 over 10s" in text
    # the checks from status: one dot each, the failed one marked
    assert len(page.having("circle", "check")) == 4
    assert len(page.having("circle", "fail")) == 1


def test_sli_series_are_drawn_against_their_threshold() -> None:
    series = [
        render.SLISeries(
            "p99LatencyMs", 50.0, [(T0.timestamp() + s, 10.0 + s / 10) for s in range(0, 60, 5)]
        ),
        render.SLISeries(
            "errorRate",
            0.01,
            [
                (T0.timestamp() + 20, 0.0),
                (T0.timestamp() + 25, 0.001),
                (T0.timestamp() + 30, float("nan")),
                (T0.timestamp() + 35, 0.0),
                (T0.timestamp() + 40, 0.0),
            ],
        ),
    ]
    page = model_page(promoted(), EVENTS, series=series)
    panels = [g["data-sli"] for g in page.having("g", "sli")]
    assert panels == ["p99LatencyMs", "errorRate"]
    assert len(page.having("line", "threshold")) == 2
    # a NaN sample is a gap: the error-rate series is drawn as two pieces
    assert len(page.having("polyline", "series")) == 1 + 2


def test_no_canary_yet_shows_progress_instead_of_a_timeline() -> None:
    body = promoted()
    body["status"] = {
        "phase": "Compressing",
        "hashes": {"run": "abcdef123456"},
        "base": {"name": "base", "phase": "Succeeded"},
        "variants": [variant("int8", "Succeeded", 0.3, 0.0, 0.1), {"name": "fp16", "phase": "Running"}],
    }
    jobs = [
        {"metadata": {"name": "digits-fp16-abcdef", "labels": {"kondense.dev/variant": "fp16",
                                                               "kondense.dev/spec-hash": "abcdef123456"}},
         "status": {"active": 1, "startTime": at(0)}},
        {"metadata": {"name": "digits-fp16-old", "labels": {"kondense.dev/variant": "fp16",
                                                            "kondense.dev/spec-hash": "000000000000"}},
         "status": {"failed": 1}},
    ]  # fmt: skip
    now = T0 + timedelta(seconds=95)
    progress = compression_progress(body, jobs, now)
    assert progress is not None
    assert (progress.done, progress.total, progress.running) == (2, 3, ["fp16"])
    assert [(j.name, j.state, format_seconds(j.seconds)) for j in progress.jobs] == [
        ("digits-fp16-abcdef", "Running", "1m35s")
    ]  # the Job of an earlier run is not this run's progress
    page = Elements(render.model_page(render.ModelView(obj=body, progress=progress, now=now), refresh=None))
    assert page.having("span", "bar")
    assert [a.get("data-done") for t, a in page.tags if a.get("id") == "progress"] == ["2"]
    assert [a for t, a in page.tags if a.get("id") == "timeline-empty"]
    assert not [a for t, a in page.tags if t == "meta" and a.get("http-equiv") == "refresh"]


def test_values_from_the_cluster_are_escaped() -> None:
    body = promoted()
    body["status"]["message"] = "<script>alert(1)</script>"
    hostile = [*EVENTS, event("CheckFailed", '"><img src=x onerror=alert(1)>', 30, "Warning")]
    text = render.model_page(render.ModelView(obj=body, events=hostile, now=T0), refresh=5)
    assert "<script>alert" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_model_list_shows_phase_variant_and_weight() -> None:
    canary = copy.deepcopy(promoted())
    canary["metadata"]["name"] = "other"
    canary["status"].update(phase="Canary", canary={"variant": "fp16", "weight": 50, "step": 0})
    html = render.models_page([promoted(), canary], None, refresh=5)
    page = Elements(html)
    rows = page.having("tr", "model")
    assert [r["data-name"] for r in rows] == ["digits", "other"]
    text = "".join(page.text)
    assert "Promoted" in text and "Canary" in text
    # the canary weight as kubectl get cmodel shows it, and what stable serves
    assert html.count('<td class="num weight-cell">0%</td>') == 1
    assert html.count('<td class="num weight-cell">50%</td>') == 1
    assert html.count('<td class="stable-cell">int8</td>') == 2
    assert [a for t, a in page.tags if t == "meta" and a.get("http-equiv") == "refresh"]


def test_problems_render_as_banners() -> None:
    page = Elements(
        render.models_page([], None, refresh=5, problems=["the Kubernetes API at x is unreachable"])
    )
    assert [a for t, a in page.tags if a.get("role") == "alert"]
    assert "the Kubernetes API at x is unreachable" in "".join(page.text)


def test_time_range_ends_at_the_last_decision_once_settled() -> None:
    steps = weight_steps(promoted()["spec"], EVENTS)
    marks = decisions(EVENTS)
    later = T0 + timedelta(hours=5)
    span = time_range(steps, marks, check_points(promoted()["status"]), later)
    assert span is not None
    assert span[0] < T0 + timedelta(seconds=10) and span[1] < T0 + timedelta(seconds=70)
    running = [s for s in steps if s.reason != "Promoted"][:1]  # still at the first step
    span = time_range(running, marks[:1], [], later)
    assert span is not None and span[1] >= later


@pytest.mark.parametrize(("low", "high"), [(0, 1), (0, 0.013), (0, 97), (1.7e9, 1.7e9 + 300), (5, 5)])
def test_ticks_cover_the_range(low: float, high: float) -> None:
    ticks = render.nice_ticks(low, high)
    assert 2 <= len(ticks) <= 12
    assert ticks[0] <= low and ticks[-1] >= min(high, ticks[-1])

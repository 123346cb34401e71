"""What happened to a CompressedModel's canary, over time (pure): weight steps and decisions read
from its Events, the analysis checks from its status.

The operator records every decision twice: in status (the latest state, the last checks) and as an
Event with a reason and a message (the history). The weight a canary had at any moment is the
history of its step Events: ``CanaryStarted`` (the first step), ``CanaryStep`` (``<variant> → N%``),
``Promoted``/``Baking`` (the variant serves 100 %), ``RolledBack``/``Aborted``/``ManualAbort``/
``Reverted`` (back to 0).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

# Events that record a decision of the rollout (each is marked on the timeline with its reason)
DECISION_REASONS = (
    "CanaryStarted",
    "CanaryStep",
    "CheckFailed",
    "WaitingForApproval",
    "Approved",
    "Paused",
    "Resumed",
    "WebhookHalted",
    "ManualPromotion",
    "Promoting",
    "Baking",
    "Promoted",
    "Aborted",
    "ManualAbort",
    "RolledBack",
    "Reverted",
    "NoVariant",
    "Failed",
)
TO_ZERO = ("RolledBack", "Aborted", "ManualAbort", "Reverted")
TO_FULL = ("Promoted", "Baking")
SETTLED = (*TO_ZERO, "Promoted", "NoVariant", "Failed")  # nothing happens after these until a spec change
_STEP = re.compile(r"→\s*(\d{1,3})%")


@dataclass(frozen=True)
class Decision:
    time: datetime
    reason: str
    message: str
    warning: bool


@dataclass(frozen=True)
class WeightStep:
    time: datetime
    weight: int  # canary traffic percent from this moment on
    reason: str


@dataclass(frozen=True)
class CheckPoint:
    time: datetime
    sli: str
    value: float | None
    threshold: float | None
    passed: bool
    variant: str | None
    message: str | None
    bake: bool = False


def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def event_time(event: Mapping[str, Any]) -> datetime | None:
    """When an Event happened: the first of its timestamps that is set (kopf writes lastTimestamp)."""
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        found = parse_time(event.get(key))
        if found is not None:
            return found
    return parse_time((event.get("metadata") or {}).get("creationTimestamp"))


def events_of(events: Sequence[Mapping[str, Any]], kind: str, name: str) -> list[Mapping[str, Any]]:
    """The Events about one object, oldest first (Events without a time are left out)."""
    mine = [
        e
        for e in events
        if (e.get("involvedObject") or {}).get("kind") == kind
        and (e.get("involvedObject") or {}).get("name") == name
        and event_time(e) is not None
    ]
    return sorted(mine, key=lambda e: event_time(e) or datetime.min.replace(tzinfo=UTC))


def decisions(events: Sequence[Mapping[str, Any]]) -> list[Decision]:
    out = []
    for e in events:
        when = event_time(e)
        if when is None or e.get("reason") not in DECISION_REASONS:
            continue
        out.append(Decision(when, str(e["reason"]), str(e.get("message") or ""), e.get("type") == "Warning"))
    return sorted(out, key=lambda d: d.time)


def weight_steps(spec: Mapping[str, Any], events: Sequence[Mapping[str, Any]]) -> list[WeightStep]:
    """The canary weight over time, one entry per change, from the decision Events."""
    steps_spec = ((spec.get("rollout") or {}).get("steps")) or [10, 25, 50, 100]
    out: list[WeightStep] = []
    for d in decisions(events):
        weight: int | None = None
        if d.reason == "CanaryStarted":
            weight = int(steps_spec[0])
        elif d.reason == "CanaryStep":
            found = _STEP.search(d.message)
            weight = int(found.group(1)) if found else None
        elif d.reason in TO_FULL:
            weight = 100
        elif d.reason in TO_ZERO:
            weight = 0
        if weight is None or (out and out[-1].weight == weight and d.reason != "CanaryStarted"):
            continue
        out.append(WeightStep(d.time, max(0, min(100, weight)), d.reason))
    return out


def check_points(status: Mapping[str, Any]) -> list[CheckPoint]:
    """Every analysis check kept in status (canary and bake), oldest first."""
    out = []
    for source, bake in (((status.get("canary") or {}).get("checks") or [], False),
                         ((status.get("bake") or {}).get("checks") or [], True)):  # fmt: skip
        for c in source:
            when = parse_time(c.get("time"))
            if when is None:
                continue
            value = c.get("value")
            threshold = c.get("threshold")
            out.append(
                CheckPoint(
                    time=when,
                    sli=str(c.get("sli")),
                    value=float(value) if isinstance(value, int | float) else None,
                    threshold=float(threshold) if isinstance(threshold, int | float) else None,
                    passed=bool(c.get("passed")),
                    variant=c.get("variant"),
                    message=c.get("message"),
                    bake=bake,
                )
            )
    return sorted(out, key=lambda c: c.time)


def time_range(
    steps: Sequence[WeightStep], marks: Sequence[Decision], checks: Sequence[CheckPoint], now: datetime
) -> tuple[datetime, datetime] | None:
    """From shortly before the first canary decision to now (or shortly after the last decision once
    the rollout settled); None when there was no canary."""
    times = [s.time for s in steps] + [d.time for d in marks] + [c.time for c in checks]
    if not steps and not checks:
        return None
    start, end = min(times), max(times)
    span = max((end - start).total_seconds(), 10.0)
    settled = bool(marks) and marks[-1].reason in SETTLED
    last = end if settled else max(end, now)
    return start - timedelta(seconds=span * 0.05), last + timedelta(seconds=span * 0.05)

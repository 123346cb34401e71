"""What the API server refused while the shell acted on a decision (pure).

``rollout.reconcile`` decides before anything acts (its status is written first: restart safety); a 4xx
on a child object is only known after the shell acted. These functions fold those refusals into the
status the same pure way: a condition on the resource and a phase that says so, never a silent retry
loop with the error only in the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from kondense.api.resource import CompressedModelStatus, Phase, VariantPhase
from kondense.operator.rollout import Decision, Event, set_condition

APPLIED = "Applied"  # the condition: False while the API server refuses one of our requests


@dataclass(frozen=True)
class Rejection:
    """One request the API server refused with a 4xx (the shell's translation of its answer)."""

    kind: str
    name: str
    code: int
    reason: str  # the API's reason: Invalid, Forbidden, NotFound, ... ("" when it gave none)
    text: str  # "Job ml/digits-base-1a2b: 422 Invalid: <the API server's message>"
    api_message: str = ""
    variant: str | None = None  # the variant whose compression Job was refused
    serving: bool = False  # a serving object (not the router's): the topology is not what status says


def _iso(now: datetime) -> str:
    return now.isoformat().replace("+00:00", "Z")


def after_acting(
    status: CompressedModelStatus, rejected: Sequence[Rejection], generation: int | None, now: datetime
) -> Decision:
    """The decided status once the shell acted on it: a refused Job fails its variant (not retried), a
    refused serving object fails the phase, condition Applied names every refusal (one Warning Event
    when that changes), and turns True again once every child applied."""
    status = status.model_copy(deep=True)
    d = Decision(status)
    ts = _iso(now)
    applied = next((c for c in status.conditions if c.type == APPLIED), None)
    if not rejected:
        if applied is not None and applied.status == "False":
            set_condition(status, APPLIED, True, APPLIED, "every child object applied", ts, generation)
        return d
    for r in rejected:
        if r.variant is not None:
            for v in [status.base, *status.variants]:
                if v is not None and v.name == r.variant:
                    v.phase, v.reason = VariantPhase.FAILED, "JobRejected"
                    v.message = f"the API server refused its Job: {r.text}"[:4096]
        if r.serving:
            status.phase = Phase.FAILED
    message = "; ".join(r.text for r in rejected)[:4096]
    set_condition(status, APPLIED, False, rejected[0].reason or "Rejected", message, ts, generation)
    if status.phase is Phase.FAILED:
        status.message = f"rejected by the API server: {message}"[:4096]
        set_condition(status, "Ready", False, Phase.FAILED.value, status.message, ts, generation)
    if applied is None or applied.status != "False" or applied.message != message:
        d.events.append(Event("Warning", "Rejected", message))
    return d


def request_refused(
    current: CompressedModelStatus, refused: Rejection, generation: int | None, now: datetime
) -> Decision:
    """A 4xx on a read (e.g. RBAC): condition Applied=False with the API's answer (the next tick
    tries again), one Warning Event when that changes the status."""
    status = current.model_copy(deep=True)
    d = Decision(status, act=False)
    message = f"the API server refused a request: {refused.code} {refused.reason}: {refused.api_message}"
    message = message[:4096]
    set_condition(status, APPLIED, False, refused.reason or "Refused", message, _iso(now), generation)
    if status != current:
        d.events.append(Event("Warning", "Refused", message))
    return d

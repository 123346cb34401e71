"""Every transition the shell used to make by hand, now made by the pure core (no I/O): a spec the
operator cannot act on (``World.problems``), children the API server refused after acting
(``after_acting``) and a refused read (``request_refused``). Table-driven."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from kondense.api.resource import CompressedModelStatus, Phase, VariantPhase, VariantStatus
from kondense.operator.rejections import Rejection, after_acting, request_refused
from kondense.operator.rollout import BASE, INVALID, World, is_invalid, reconcile, set_condition
from kondense_testing.builders import digits_spec

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
TS = "2026-11-22T10:00:00Z"


def status(phase: Phase, compressing: bool = True, invalid: str | None = None) -> CompressedModelStatus:
    s = CompressedModelStatus(phase=phase)
    if compressing:
        s.hashes.compression = "abc"
    if invalid is not None:
        set_condition(s, INVALID, True, "InvalidSpec", invalid, TS, 1)
    return s


def conditions(s: CompressedModelStatus) -> dict[str, tuple[str, str | None, str | None]]:
    return {c.type: (c.status, c.reason, c.message) for c in s.conditions}


@dataclass(frozen=True)
class InvalidCase:
    id: str
    before: CompressedModelStatus
    problems: tuple[str, ...]
    phase: Phase  # after
    event: bool  # one Warning Invalid


INVALID_CASES = [
    InvalidCase("new spec: Failed", CompressedModelStatus(), ("spec.targets: x",), Phase.FAILED, True),
    InvalidCase(
        "pending: Failed",
        status(Phase.PENDING),
        ("PersistentVolumeClaim ml/m is missing",),
        Phase.FAILED,
        True,
    ),
    InvalidCase(
        "never compressed: Failed", status(Phase.PROMOTED, compressing=False), ("a",), Phase.FAILED, True
    ),
    InvalidCase(
        "canary keeps its phase",
        status(Phase.CANARY),
        ("HTTPRoute ml/r does not opt in",),
        Phase.CANARY,
        True,
    ),
    InvalidCase(
        "promoted keeps its phase", status(Phase.PROMOTED), ("image x is not allowed",), Phase.PROMOTED, True
    ),
]


@pytest.mark.parametrize("case", INVALID_CASES, ids=[c.id for c in INVALID_CASES])
def test_problems_found_by_the_shell_make_the_spec_invalid_and_nothing_acts(case: InvalidCase) -> None:
    d = reconcile(digits_spec(), case.before, 3, World(problems=case.problems), T0)
    assert d.status.phase is case.phase
    assert d.act is False and d.create_jobs == [] and d.analysis is None
    assert conditions(d.status)[INVALID] == ("True", "InvalidSpec", "; ".join(case.problems))
    assert d.status.message == f"invalid: {'; '.join(case.problems)}"
    assert d.status.observedGeneration == 3
    assert [(e.type, e.reason) for e in d.events] == ([("Warning", "Invalid")] if case.event else [])
    assert is_invalid(d.status)


def test_a_spec_that_does_not_validate_is_invalid_with_the_fields_named() -> None:
    problems = ("spec.rollout.steps: must increase", "spec.targets: at least one")
    d = reconcile(None, CompressedModelStatus(), 1, World(problems=problems), T0)
    assert d.status.phase is Phase.FAILED and d.act is False
    assert conditions(d.status)[INVALID][2] == "spec.rollout.steps: must increase; spec.targets: at least one"


def test_the_same_problems_again_change_nothing_and_post_nothing() -> None:
    first = reconcile(None, CompressedModelStatus(), 1, World(problems=("a",)), T0).status
    again = reconcile(None, first, 1, World(problems=("a",)), T0.replace(minute=5))
    assert again.status == first and again.events == []


def test_a_spec_valid_again_drops_the_invalid_condition_and_acts() -> None:
    before = status(Phase.FAILED, compressing=False, invalid="spec.targets: x")
    d = reconcile(digits_spec(), before, 2, World(), T0)
    assert INVALID not in conditions(d.status) and not is_invalid(d.status)
    assert d.act is True and d.status.phase is Phase.COMPRESSING
    assert sorted(d.create_jobs) == sorted([BASE, *(t.name for t in digits_spec().targets)])


def compressing() -> CompressedModelStatus:
    s = status(Phase.COMPRESSING)
    s.base = VariantStatus(name=BASE, technique="baseline", phase=VariantPhase.RUNNING)
    s.variants = [VariantStatus(name="fp16", technique="fp16", phase=VariantPhase.RUNNING)]
    return s


JOB = Rejection(
    "Job", "digits-base-1", 422, "Invalid", "Job ml/digits-base-1: 422 Invalid: bad", "bad", variant=BASE
)
SERVICE = Rejection(
    "Service", "digits", 422, "Invalid", "Service ml/digits: 422 Invalid: name", "name", serving=True
)
ROUTE = Rejection("HTTPRoute", "r", 403, "Forbidden", "HTTPRoute ml/r: 403 Forbidden: no", "no")
STALE = Rejection("Job", "old", 403, "", "Job ml/old: 403 : no", "no")


@dataclass(frozen=True)
class RejectionCase:
    id: str
    rejected: tuple[Rejection, ...]
    phase: Phase
    base: VariantPhase
    applied: tuple[str, str] | None  # (status, reason)
    message_starts: str | None


REJECTION_CASES = [
    RejectionCase("nothing refused", (), Phase.COMPRESSING, VariantPhase.RUNNING, None, None),
    RejectionCase(
        "a Job fails its variant only",
        (JOB,),
        Phase.COMPRESSING,
        VariantPhase.FAILED,
        ("False", "Invalid"),
        None,
    ),
    RejectionCase(
        "a serving object fails the phase",
        (SERVICE,),
        Phase.FAILED,
        VariantPhase.RUNNING,
        ("False", "Invalid"),
        "rejected by the API server: Service ml/digits",
    ),
    RejectionCase(
        "a route is reported, the phase kept",
        (ROUTE,),
        Phase.COMPRESSING,
        VariantPhase.RUNNING,
        ("False", "Forbidden"),
        None,
    ),
    RejectionCase(
        "no reason: Rejected", (STALE,), Phase.COMPRESSING, VariantPhase.RUNNING, ("False", "Rejected"), None
    ),
    RejectionCase(
        "the first reason names them all",
        (ROUTE, SERVICE),
        Phase.FAILED,
        VariantPhase.RUNNING,
        ("False", "Forbidden"),
        "rejected by the API server: HTTPRoute ml/r",
    ),
]


@pytest.mark.parametrize("case", REJECTION_CASES, ids=[c.id for c in REJECTION_CASES])
def test_refused_children_become_a_condition_and_a_phase(case: RejectionCase) -> None:
    before = compressing()
    d = after_acting(before, case.rejected, 4, T0)
    assert before == compressing()  # pure: the input is not touched
    s = d.status
    assert s.phase is case.phase
    assert s.base is not None and s.base.phase is case.base
    if case.base is VariantPhase.FAILED:
        assert (
            s.base.reason == "JobRejected" and s.base.message == f"the API server refused its Job: {JOB.text}"
        )
    applied = conditions(s).get("Applied")
    assert (applied[:2] if applied else None) == case.applied
    if case.rejected:
        assert applied is not None and applied[2] == "; ".join(r.text for r in case.rejected)
        assert [(e.type, e.reason) for e in d.events] == [("Warning", "Rejected")]
    else:
        assert d.events == [] and s == before
    if case.message_starts:
        assert (s.message or "").startswith(case.message_starts)
        assert conditions(s)["Ready"][:2] == ("False", "Failed")


def test_the_same_refusal_again_posts_no_second_event_and_recovery_turns_applied_true() -> None:
    first = after_acting(compressing(), (ROUTE,), 4, T0).status
    again = after_acting(first, (ROUTE,), 4, T0)
    assert again.events == [] and again.status == first
    recovered = after_acting(first, (), 4, T0).status
    assert conditions(recovered)["Applied"] == ("True", "Applied", "every child object applied")


def test_a_refused_read_is_reported_once() -> None:
    read = Rejection("request", "digits", 403, "Forbidden", "", "jobs.batch is forbidden")
    d = request_refused(compressing(), read, 4, T0)
    assert conditions(d.status)["Applied"] == (
        "False",
        "Forbidden",
        "the API server refused a request: 403 Forbidden: jobs.batch is forbidden",
    )
    assert d.status.phase is Phase.COMPRESSING and d.act is False
    assert [e.reason for e in d.events] == ["Refused"]
    assert request_refused(d.status, read, 4, T0).events == []

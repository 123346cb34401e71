"""A breach reaches notifications with its structured fields (SLI, value, threshold, window), not only
as Event text: from the state machine's decision to a real receiver on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from kondense.api.resource import CompressedModelSpec, CompressedModelStatus, Notification, Phase
from kondense.operator.analysis import SLI, Reading
from kondense.operator.notifications import Notifier, body, notices
from kondense.operator.rollout import (
    BASE,
    AnalysisDue,
    Event,
    JobObservation,
    JobState,
    TrackObservation,
    World,
    analysis_due,
    reconcile,
    topology,
)
from kondense.operator.routers import ReplicaRouter
from kondense_testing.builders import digits_spec, job_result
from kondense_testing.receivers import Receiver, receiving

NOW = datetime(2026, 11, 22, tzinfo=UTC)
SLOW = [
    Reading(SLI.REQUESTS, 500),
    Reading(SLI.P99_LATENCY_MS, 180.0),
    Reading(SLI.ERROR_RATE, 0.0),
    Reading(SLI.ACCURACY_DELTA, 0.001),
]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


def breach_events(spec: CompressedModelSpec) -> list[Event]:
    """The events of the first interval analysis of a canary whose p99 is 180 ms (limit below)."""
    jobs = {BASE: JobObservation(JobState.SUCCEEDED, result=job_result(BASE, size=1.0))}
    for target in spec.targets:
        jobs[target.name] = JobObservation(JobState.SUCCEEDED, result=job_result(target.name))
    status = reconcile(spec, CompressedModelStatus(), 1, World(), NOW).status
    status = reconcile(spec, status, 1, World(jobs=jobs), NOW).status
    assert status.phase is Phase.CANARY
    topo = topology(spec, status, ReplicaRouter().split)
    assert topo.stable is not None and topo.canary is not None
    world = World(
        jobs=jobs,
        stable=TrackObservation(3, 3, 3, topo.stable.artifact.sha256, True),
        canary=TrackObservation(1, 1, 1, topo.canary.artifact.sha256, True),
    )
    now = NOW + timedelta(seconds=1)
    status = reconcile(spec, status, 1, world, now).status  # the canary serves: the clock starts
    now += timedelta(seconds=spec.rollout.interval_seconds())
    due = analysis_due(spec, status, world, now)
    assert due is AnalysisDue.INTERVAL
    return reconcile(spec, status, 1, replace(world, readings=SLOW, due=due), now).events


def test_a_breach_event_carries_its_checks() -> None:
    spec = digits_spec()
    gate = spec.rollout.analysis.p99LatencyMs
    assert gate is not None
    (event,) = [e for e in breach_events(spec) if e.reason in ("CheckFailed", "RolledBack")]
    (check,) = event.breaches
    assert (check.sli, check.value, check.passed) == ("p99LatencyMs", 180.0, False)
    assert check.threshold == gate.max
    assert check.window and check.variant


def test_notice_bodies_carry_the_breach_fields() -> None:
    spec = digits_spec()
    events = breach_events(spec)
    targets = [
        Notification.model_validate({"name": kind, "type": kind, "secretKeyRef": {"name": "s", "key": kind}})
        for kind in ("webhook", "slack")
    ]
    generic, slack = [n for n in notices("ml", "digits", targets, events) if n.reason == "CheckFailed"]
    (fields,) = body(generic)["breaches"]
    assert fields["sli"] == "p99LatencyMs" and fields["value"] == 180.0
    assert fields["threshold"] is not None and fields["window"] and fields["variant"]
    text = body(slack)["text"]
    assert f"• p99LatencyMs = 180 (limit {fields['threshold']:g}) over {fields['window']}" in text


def test_the_receiver_gets_the_structured_breach(receiver: Receiver) -> None:
    events = breach_events(digits_spec())
    target = Notification.model_validate(
        {
            "name": "oncall",
            "type": "webhook",
            "severity": "warning",
            "secretKeyRef": {"name": "s", "key": "url"},
        }
    )
    notifier = Notifier(lambda ns, ref: receiver.url + "/hook")
    assert notifier.notify("ml", "digits", [target], events) >= 1
    deadline = time.monotonic() + 60
    while not receiver.received:
        assert time.monotonic() < deadline, "no notice arrived"
        time.sleep(0.05)
    notifier.queue.join()
    first = receiver.received[0][1]
    assert first["reason"] == "CheckFailed" and first["severity"] == "warning"
    (fields,) = first["breaches"]
    assert fields["sli"] == "p99LatencyMs" and fields["value"] == 180.0 and fields["window"]

"""Pause, manual approval and the one-shot intents of `kubectl kondense`, in the pure core.

The shell parses the object's annotations into ``World.intents``; these tests drive ``reconcile`` the way
the shell does (status in, status out), with the annotations the plugin writes.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from kondense.api import intents
from kondense.api.resource import CompressedModelSpec, CompressedModelStatus, Phase, VariantPhase
from kondense.operator.analysis import Reading
from kondense.operator.rollout import (
    BASE,
    AnalysisDue,
    Decision,
    JobObservation,
    JobState,
    WebhookResult,
    World,
    analysis_due,
    post_rollout_due,
    reconcile,
    rollout_hash,
    topology,
    webhooks_due,
)
from kondense.operator.routers import ReplicaRouter
from kondense_testing.builders import digits_body, job_result, sha
from kondense_testing.paths import EXAMPLES
from kondense_testing.rollouts import GOOD, SLOW, settled_world

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
JOBS = {
    BASE: JobObservation(JobState.SUCCEEDED, result=job_result(BASE, size=1.0)),
    "int8": JobObservation(JobState.SUCCEEDED, result=job_result("int8", delta=0.004, size=0.26)),
    "dynamic-int8": JobObservation(JobState.FAILED, reason="OOMKilled"),
    "fp16": JobObservation(JobState.SUCCEEDED, result=job_result("fp16", delta=0.0, size=0.5)),
    "slim-int8": JobObservation(JobState.FAILED, reason="OOMKilled"),
}


def spec_with(approval: str = "none") -> CompressedModelSpec:
    body = digits_body()["spec"]
    body["rollout"]["approval"] = approval
    return CompressedModelSpec.model_validate(body)


class Driver:
    """The shell, minus I/O: annotations -> World.intents, observed Deployments from the topology."""

    def __init__(self, spec: CompressedModelSpec) -> None:
        self.spec = spec
        self.status = CompressedModelStatus()
        self.now = T0
        self.annotations: dict[str, str] = {}
        self.nonces = 0
        self.jobs = JOBS

    def world(self) -> World:
        world = settled_world(self.spec, self.status, self.jobs, canary_ready=1)
        return replace(world, intents=intents.parse(self.annotations))

    def tick(self, readings: list[Reading] | None = None, advance: float = 1.0) -> Decision:
        self.now += timedelta(seconds=advance)
        world = self.world()
        if readings is not None:
            due = analysis_due(self.spec, self.status, world, self.now)
            assert due is not AnalysisDue.NONE, "the shell reads SLIs only when due"
            world = replace(world, readings=readings, due=due)
        decision = reconcile(self.spec, self.status, 1, world, self.now)
        self.status = decision.status
        return decision

    def interval(self, readings: list[Reading]) -> Decision:
        return self.tick(readings, advance=self.spec.rollout.interval_seconds())

    def request(self, intent: intents.Intent, *, skip_analysis: bool = False) -> str:
        self.nonces += 1
        nonce = f"n{self.nonces}"
        self.annotations[intent.annotation] = intents.annotation_value(
            intent, nonce, skip_analysis=skip_analysis
        )
        return nonce

    def pause(self, paused: bool = True) -> None:
        if paused:
            self.annotations[intents.PAUSED] = "true"
        else:
            self.annotations.pop(intents.PAUSED, None)

    def to_canary(self) -> None:
        self.tick()
        self.tick()  # Jobs done: select, canary int8 at 25 %
        self.tick()  # canary pods serve: the analysis clock starts
        assert self.status.phase is Phase.CANARY and self.canary.readyAt is not None

    @property
    def canary(self) -> Any:
        assert self.status.canary is not None
        return self.status.canary

    def phases(self) -> dict[str, VariantPhase]:
        return {v.name: v.phase for v in self.status.variants}

    def reasons(self, decision: Decision) -> list[str]:
        return [e.reason for e in decision.events]


def promote_through(driver: Driver) -> None:
    """Stable settles on the canary's artifact: the promotion completes."""
    for _ in range(2):
        driver.tick()
    assert driver.status.phase is Phase.PROMOTED


# ------------------------------------------------------------------------------------------------
# pause / resume


def test_pause_holds_weight_and_step_then_resume_goes_on() -> None:
    driver = Driver(spec_with())
    driver.to_canary()
    driver.pause()
    decision = driver.tick()
    assert driver.reasons(decision) == ["Paused"] and driver.status.paused
    for _ in range(3):  # passing analyses while paused: recorded, but no step up
        decision = driver.interval(GOOD)
        assert "CanaryStep" not in driver.reasons(decision)
        assert (driver.canary.step, driver.canary.requestedWeight) == (0, 25)
    assert driver.status.message and driver.status.message.startswith("paused: canary int8 held at 25%")
    assert driver.canary.lastAnalysisAt is not None  # analysis kept running
    driver.pause(False)
    decision = driver.tick()
    assert driver.reasons(decision) == ["Resumed"] and not driver.status.paused
    decision = driver.interval(GOOD)
    assert driver.reasons(decision) == ["CanaryStep"] and driver.canary.requestedWeight == 50


def test_pause_never_blocks_a_rollback_and_starts_no_new_canary() -> None:
    driver = Driver(spec_with())
    driver.to_canary()
    driver.pause()
    driver.interval(SLOW)
    decision = driver.interval(SLOW)
    assert "RolledBack" in driver.reasons(decision)
    assert driver.phases()["int8"] is VariantPhase.ROLLED_BACK
    # the next variant waits for the resume: no canary, stable at full size
    assert driver.status.phase is Phase.EVALUATING and "fp16 starts on resume" in (
        driver.status.message or ""
    )
    for _ in range(2):
        driver.tick()
        topo = topology(driver.spec, driver.status, ReplicaRouter().split)
        assert topo.canary is None and topo.stable is not None and topo.stable.replicas == 4
    driver.pause(False)
    driver.tick()
    assert driver.status.phase is Phase.CANARY and driver.canary.variant == "fp16"
    assert driver.canary.requestedWeight == 25


def test_pause_while_evaluating_starts_no_canary() -> None:
    driver = Driver(spec_with())
    driver.pause()
    driver.tick()
    driver.tick()
    assert driver.status.phase is Phase.EVALUATING
    assert driver.status.message == "paused: canary int8 starts on resume"
    driver.pause(False)
    driver.tick()
    assert driver.status.phase is Phase.CANARY and driver.canary.variant == "int8"


# ------------------------------------------------------------------------------------------------
# manual approval


@pytest.mark.parametrize(
    ("approval", "waits"),
    [
        ("none", []),
        ("promotion", [(2, "promotion")]),
        ("everyStep", [(0, "the step to 50%"), (1, "the step to 100%"), (2, "promotion")]),
    ],
)
def test_approval_gates(approval: str, waits: list[tuple[int, str]]) -> None:
    driver = Driver(spec_with(approval))
    driver.to_canary()
    seen: list[tuple[int, str]] = []
    for _ in range(12):
        if driver.canary.promoting:
            break
        decision = driver.interval(GOOD)
        if driver.status.phase is Phase.WAITING_FOR_APPROVAL:
            assert driver.reasons(decision) == ["WaitingForApproval"]
            message = driver.status.message or ""
            seen.append((driver.canary.step, message.split(": ", 1)[1].split(" waits")[0]))
            weight = driver.canary.requestedWeight
            # while waiting: the canary keeps its weight, analysis goes on, one Event only
            again = driver.interval(GOOD)
            assert again.events == [] and again.analysis is not None
            assert driver.status.phase is Phase.WAITING_FOR_APPROVAL
            assert driver.canary.requestedWeight == weight
            topo = topology(driver.spec, driver.status, ReplicaRouter().split)
            assert topo.canary is not None and topo.weight == weight
            driver.request(intents.Intent.APPROVE)
            decision = driver.tick()
            assert driver.reasons(decision)[0] == "Approved"
            assert driver.status.phase is Phase.CANARY
    assert seen == waits
    assert driver.canary.promoting
    promote_through(driver)


def test_a_breach_while_waiting_for_approval_rolls_back() -> None:
    driver = Driver(spec_with("everyStep"))
    driver.to_canary()
    driver.interval(GOOD)
    assert driver.status.phase is Phase.WAITING_FOR_APPROVAL
    driver.interval(SLOW)
    decision = driver.interval(SLOW)
    assert "RolledBack" in driver.reasons(decision)
    assert driver.phases()["int8"] is VariantPhase.ROLLED_BACK
    assert driver.status.phase is Phase.CANARY and driver.canary.variant == "fp16"


def test_changing_approval_does_not_restart_the_canary() -> None:
    assert rollout_hash(spec_with("none")) == rollout_hash(spec_with("everyStep"))
    driver = Driver(spec_with("everyStep"))
    driver.to_canary()
    driver.interval(GOOD)
    assert driver.status.phase is Phase.WAITING_FOR_APPROVAL
    driver.spec = spec_with("none")  # approval switched off: the next passed analysis steps up
    decision = driver.interval(GOOD)
    assert driver.reasons(decision) == ["CanaryStep"] and driver.status.phase is Phase.CANARY


# ------------------------------------------------------------------------------------------------
# one-shot intents


def test_promote_advances_one_step_now() -> None:
    driver = Driver(spec_with())
    driver.to_canary()
    nonce = driver.request(intents.Intent.PROMOTE)
    decision = driver.tick()  # no analysis due: the step goes up by hand
    assert driver.reasons(decision) == ["ManualPromotion", "CanaryStep"]
    assert (driver.canary.step, driver.canary.requestedWeight) == (1, 50)
    assert driver.status.intents == {"promote": nonce}
    # the same command again is a new nonce: one more step
    driver.request(intents.Intent.PROMOTE)
    driver.tick()
    assert driver.canary.requestedWeight == 100


def test_promote_skip_analysis_promotes_at_once() -> None:
    driver = Driver(spec_with("everyStep"))
    driver.to_canary()
    driver.request(intents.Intent.PROMOTE, skip_analysis=True)
    decision = driver.tick()
    assert driver.reasons(decision) == ["ManualPromotion", "Promoting"]
    assert driver.canary.promoting
    topo = topology(driver.spec, driver.status, ReplicaRouter().split)
    assert topo.stable is not None and topo.stable.artifact.sha256 == sha("int8")
    promote_through(driver)
    assert driver.status.stable is not None and driver.status.stable.variant == "int8"


@pytest.mark.parametrize("when", ["canary", "waiting", "promoting", "paused"])
def test_abort_returns_everything_to_stable(when: str) -> None:
    driver = Driver(spec_with("everyStep"))
    driver.to_canary()
    if when == "waiting":
        driver.interval(GOOD)
        assert driver.status.phase is Phase.WAITING_FOR_APPROVAL
    elif when == "promoting":
        driver.request(intents.Intent.PROMOTE, skip_analysis=True)
        driver.tick()
        assert driver.canary.promoting
    elif when == "paused":
        driver.pause()
        driver.tick()
    nonce = driver.request(intents.Intent.ABORT)
    decision = driver.tick()
    assert "ManualAbort" in driver.reasons(decision)
    status = driver.status
    assert status.phase is Phase.ROLLED_BACK and status.intents["abort"] == nonce
    int8 = {v.name: v for v in status.variants}["int8"]
    assert (int8.phase, int8.reason) == (VariantPhase.ROLLED_BACK, "Aborted")
    assert driver.canary.requestedWeight == 0 and not driver.canary.promoting
    # no next variant; 100 % on stable, which still serves the base model's artifact
    topo = topology(driver.spec, status, ReplicaRouter().split)
    assert topo.canary is None and topo.stable is not None
    assert topo.stable.artifact.sha256 == sha(BASE) and topo.stable.replicas == 4
    assert driver.phases()["fp16"] is VariantPhase.SUCCEEDED
    for _ in range(2):
        assert driver.tick(advance=30).events == []


def test_retry_starts_over_after_an_abort() -> None:
    driver = Driver(spec_with())
    driver.to_canary()
    driver.request(intents.Intent.ABORT)
    driver.tick()
    nonce = driver.request(intents.Intent.RETRY)
    decision = driver.tick()
    assert driver.reasons(decision) == ["Retrying", "CanaryStarted"]
    assert driver.status.phase is Phase.CANARY and driver.canary.variant == "int8"
    assert (driver.canary.step, driver.canary.requestedWeight, driver.canary.failedChecks) == (0, 25, 0)
    assert driver.status.ladder == ["fp16"] and driver.status.intents["retry"] == nonce


def test_retry_after_the_ladder_ran_out() -> None:
    driver = Driver(spec_with())
    driver.to_canary()
    for _ in range(4):
        if driver.canary.readyAt is None:
            driver.tick()
        driver.interval(SLOW)
    assert driver.status.phase is Phase.ROLLED_BACK
    driver.request(intents.Intent.RETRY)
    driver.tick()
    assert driver.status.phase is Phase.CANARY and driver.canary.variant == "int8"
    assert driver.phases() == {
        "int8": VariantPhase.SUCCEEDED,
        "dynamic-int8": VariantPhase.FAILED,
        "fp16": VariantPhase.SUCCEEDED,
        "slim-int8": VariantPhase.FAILED,
    }


@pytest.mark.parametrize(
    ("intent", "phase", "why"),
    [
        (intents.Intent.APPROVE, "canary", "nothing waits for approval (phase Canary)"),
        (intents.Intent.RETRY, "canary", "only a rolled back or failed rollout is retried (phase Canary)"),
        (intents.Intent.ABORT, "promoted", "no canary to abort (phase Promoted)"),
        (intents.Intent.PROMOTE, "promoted", "no canary to promote (phase Promoted)"),
        (intents.Intent.PROMOTE, "compressing", "no canary to promote (phase Compressing)"),
    ],
)
def test_intents_that_do_not_apply_are_acknowledged_and_ignored(
    intent: intents.Intent, phase: str, why: str
) -> None:
    driver = Driver(spec_with())
    if phase == "compressing":
        driver.jobs = {name: JobObservation(JobState.ACTIVE) for name in JOBS}
        driver.tick()
    else:
        driver.to_canary()
    if phase == "promoted":
        driver.request(intents.Intent.PROMOTE, skip_analysis=True)
        driver.tick()
        promote_through(driver)
    before = driver.status.model_copy(deep=True)
    nonce = driver.request(intent)
    decision = driver.tick()
    assert [(e.reason, e.message) for e in decision.events] == [
        ("IntentIgnored", f"{intent.value} ({nonce}): {why}")
    ]
    assert driver.status.intents[intent.value] == nonce
    assert driver.status.phase is before.phase
    assert driver.tick().events == []  # acknowledged: never again


# ------------------------------------------------------------------------------------------------
# restart safety: the acknowledgement is written with the effect


@pytest.mark.parametrize(
    ("intent", "skip"),
    [
        (intents.Intent.PROMOTE, False),
        (intents.Intent.PROMOTE, True),
        (intents.Intent.ABORT, False),
        (intents.Intent.APPROVE, False),
    ],
)
def test_a_replayed_reconcile_never_acts_twice_on_a_nonce(intent: intents.Intent, skip: bool) -> None:
    driver = Driver(spec_with("everyStep"))
    driver.to_canary()
    if intent is intents.Intent.APPROVE:
        driver.interval(GOOD)
    before = driver.status.model_copy(deep=True)  # what the restarted operator might read ...
    driver.request(intent, skip_analysis=skip)
    first = driver.tick()
    assert first.events
    saved = driver.status.model_copy(deep=True)  # ... or this, if the first write landed
    # died before the status write: the new process acts once, from the old status
    replay = Driver(driver.spec)
    replay.status, replay.now, replay.annotations = before, driver.now, dict(driver.annotations)
    again = replay.tick(advance=0)
    assert [e.reason for e in again.events] == [e.reason for e in first.events]
    assert replay.status.model_dump(exclude={"conditions"}) == saved.model_dump(exclude={"conditions"})
    # died after it: the stored acknowledgement means nothing is done again
    replay.status = saved
    later = replay.tick(advance=0)
    # (a promotion started by hand completes now that stable settled: that is its effect, not a repeat)
    assert not {e.reason for e in later.events} & {e.reason for e in first.events}
    assert replay.status.intents == saved.intents
    assert replay.canary.step == saved.canary.step  # type: ignore[union-attr]
    assert replay.canary.requestedWeight == saved.canary.requestedWeight  # type: ignore[union-attr]


def test_pause_survives_a_restart_and_abort_wins_over_promote() -> None:
    driver = Driver(spec_with())
    driver.to_canary()
    driver.pause()
    driver.tick()
    saved = driver.status.model_copy(deep=True)
    restarted = Driver(driver.spec)
    restarted.status, restarted.now, restarted.annotations = saved, driver.now, dict(driver.annotations)
    assert restarted.tick().events == []  # the pause was already acknowledged
    restarted.interval(GOOD)
    assert restarted.canary.requestedWeight == 25  # still held
    restarted.request(intents.Intent.PROMOTE)
    restarted.request(intents.Intent.ABORT)
    decision = restarted.tick()
    assert restarted.reasons(decision) == [
        "ManualAbort",
        "IntentIgnored",
    ]  # abort first; then nothing is left to promote
    assert restarted.status.phase is Phase.ROLLED_BACK
    assert set(restarted.status.intents) == {"abort", "promote"}


# ------------------------------------------------------------------------------------------------
# webhooks: the shell calls the ones due (webhooks_due) and puts the results in World.webhooks


def spec_with_hooks(*hooks: tuple[str, str]) -> CompressedModelSpec:
    body = digits_body()["spec"]
    body["rollout"]["webhooks"] = [
        {"name": name, "type": kind, "url": f"http://hooks.test/{name}"} for name, kind in hooks
    ]
    return CompressedModelSpec.model_validate(body)


class HookDriver(Driver):
    """Answers every due webhook with the verdict the test sets per name (the shell's part)."""

    def __init__(self, spec: CompressedModelSpec) -> None:
        super().__init__(spec)
        self.answers: dict[str, tuple[bool, str]] = {}
        self.called: list[str] = []

    def tick(self, readings: list[Reading] | None = None, advance: float = 1.0) -> Decision:
        self.now += timedelta(seconds=advance)
        world = self.world()
        due = analysis_due(self.spec, self.status, world, self.now)
        if readings is not None:
            assert due is not AnalysisDue.NONE
            world = replace(world, readings=readings, due=due)
        results = {}
        for hook in webhooks_due(self.spec, self.status, due if readings is not None else AnalysisDue.NONE):
            self.called.append(f"{hook.type.value}:{hook.name}")
            ok, message = self.answers.get(hook.name, (True, "answered 200"))
            results[hook.name] = WebhookResult(hook.name, hook.type, ok, message)
        world = replace(world, webhooks=results)
        decision = reconcile(self.spec, self.status, 1, world, self.now)
        self.status = decision.status
        return decision


def test_a_failing_rollout_webhook_is_a_failed_check_that_names_it() -> None:
    driver = HookDriver(spec_with_hooks(("smoke", "rollout")))
    driver.to_canary()
    driver.answers["smoke"] = (False, "answered 503: not ready")
    decision = driver.interval(GOOD)
    assert driver.reasons(decision) == ["CheckFailed"] and driver.canary.failedChecks == 1
    check = driver.canary.checks[-1]
    assert (check.sli, check.passed) == ("webhook/smoke", False)
    assert check.message == "rollout webhook smoke (http://hooks.test/smoke): answered 503: not ready"
    assert driver.canary.requestedWeight == 25  # halted
    driver.answers["smoke"] = (False, "no answer within 5s (timed out)")
    driver.interval(GOOD)
    int8 = {v.name: v for v in driver.status.variants}["int8"]
    assert int8.phase is VariantPhase.ROLLED_BACK and "timed out" in (int8.message or "")
    assert driver.canary.variant == "fp16"
    driver.answers["smoke"] = (True, "answered 200")
    driver.tick()
    assert driver.reasons(driver.interval(GOOD)) == ["CanaryStep"]


def test_a_rollback_webhook_answering_2xx_rolls_back_at_once() -> None:
    driver = HookDriver(spec_with_hooks(("kill-switch", "rollback")))
    driver.to_canary()
    driver.answers["kill-switch"] = (False, "answered 404")  # the normal case: no rollback asked
    assert driver.reasons(driver.interval(GOOD)) == ["CanaryStep"]
    driver.answers["kill-switch"] = (True, "answered 200")
    decision = driver.interval(GOOD)
    assert driver.reasons(decision)[:2] == ["Aborted", "RolledBack"]  # whatever failureLimit
    assert {v.name: v.reason for v in driver.status.variants}["int8"] == "Abort"


@pytest.mark.parametrize("kind", ["confirm-traffic-increase", "confirm-promotion"])
def test_confirm_webhooks_hold_without_counting_failures(kind: str) -> None:
    driver = HookDriver(spec_with_hooks(("gate", kind)))
    driver.to_canary()
    driver.answers["gate"] = (False, "answered 403: closed")
    if kind == "confirm-promotion":  # steps up freely, holds before promoting
        for weight in (50, 100):
            driver.interval(GOOD)
            assert driver.canary.requestedWeight == weight
    before = driver.canary.requestedWeight
    for i in range(3):
        decision = driver.interval(GOOD)
        assert driver.reasons(decision) == (["WebhookHalted"] if i == 0 else [])
        assert driver.canary.requestedWeight == before and not driver.canary.promoting
        assert driver.canary.failedChecks == 0
    assert f"not confirmed: {kind} webhook gate: answered 403: closed" in (driver.status.message or "")
    driver.answers["gate"] = (True, "answered 200")
    decision = driver.interval(GOOD)
    assert driver.reasons(decision) == ["Promoting" if kind == "confirm-promotion" else "CanaryStep"]


def test_pre_rollout_webhooks_hold_every_canary_start() -> None:
    driver = HookDriver(spec_with_hooks(("warm-up", "pre-rollout")))
    driver.answers["warm-up"] = (False, "unreachable: ConnectError: refused")
    driver.tick()
    decision = driver.tick()  # compressed: Evaluating; the shell calls pre-rollout hooks from the next tick
    assert driver.status.message == "canary int8: pre-rollout webhooks first"
    assert "WebhookHalted" not in driver.reasons(decision)
    assert driver.reasons(driver.tick()) == ["WebhookHalted"]  # called: it failed, said once
    for _ in range(2):
        driver.tick()
        assert driver.status.phase is Phase.EVALUATING
        assert topology(driver.spec, driver.status, ReplicaRouter().split).canary is None
    assert driver.status.message == (
        "canary int8 not started: pre-rollout webhook warm-up: unreachable: ConnectError: refused"
    )
    driver.answers["warm-up"] = (True, "answered 204")
    driver.tick()
    assert driver.status.phase is Phase.CANARY and driver.canary.variant == "int8"
    # a rollback goes through selection again: the next variant waits for the webhook too
    driver.tick()
    driver.interval(SLOW)
    driver.interval(SLOW)
    assert driver.status.phase is Phase.EVALUATING and "fp16" in (driver.status.message or "")
    driver.tick()
    assert driver.status.phase is Phase.CANARY and driver.canary.variant == "fp16"
    assert driver.called.count("pre-rollout:warm-up") >= 4


def test_post_rollout_webhooks_are_due_once_the_rollout_ends() -> None:
    spec = spec_with_hooks(("tell", "post-rollout"), ("smoke", "rollout"))
    driver = HookDriver(spec)
    driver.to_canary()
    canary_status = driver.status.model_copy(deep=True)
    driver.request(intents.Intent.ABORT)
    driver.tick()
    assert [h.name for h in post_rollout_due(spec, canary_status, driver.status)] == ["tell"]
    assert post_rollout_due(spec, driver.status, driver.status) == []
    assert "post-rollout:tell" not in driver.called  # never with the analysis
    # webhooks gate the rollout, they do not change what it serves: editing them restarts nothing
    assert rollout_hash(spec) == rollout_hash(spec_with())


def test_the_timer_wakes_for_an_unacknowledged_intent_even_when_settled() -> None:
    from kondense.operator.handlers import intent_waiting

    settled = {"phase": "RolledBack", "intents": {"retry": "n1"}}
    assert not intent_waiting({}, settled)
    assert not intent_waiting({"kondense.dev/retry": "n1"}, settled)  # acknowledged
    assert intent_waiting({"kondense.dev/retry": "n2"}, settled)  # a new nonce
    assert intent_waiting({intents.PAUSED: "true"}, settled)  # pause not acknowledged yet
    assert not intent_waiting({intents.PAUSED: "true"}, {**settled, "paused": True})
    assert intent_waiting({}, {**settled, "paused": True})  # resume not acknowledged yet
    assert intent_waiting(
        {"kondense.dev/abort": "x"}, {"intents": "garbage"}
    )  # a bad status: pending, no error


@pytest.mark.parametrize(
    ("example", "digest"), [("digits", "267c5267071a"), ("digits-triton", "237c68608a57")]
)
def test_fields_added_later_leave_the_rollout_hash_alone_while_unset(example: str, digest: str) -> None:
    """The examples' rollout hashes as the operator computed them before ``serving.workers`` existed:
    upgrading the operator must not roll every model out again. Setting the field does."""
    body = next(
        doc
        for doc in yaml.safe_load_all((EXAMPLES / example / "compressedmodel.yaml").read_text())
        if doc and doc.get("kind") == "CompressedModel"
    )
    assert rollout_hash(CompressedModelSpec.model_validate(body["spec"])) == digest
    if example == "digits":
        body["spec"]["serving"]["workers"] = 2
        assert rollout_hash(CompressedModelSpec.model_validate(body["spec"])) != digest

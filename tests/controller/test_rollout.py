"""The rollout state machine, driven tick by tick with observed worlds (pure, no I/O)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from kondense.api.resource import (
    CanaryStatus,
    CompressedModelSpec,
    CompressedModelStatus,
    Phase,
    VariantPhase,
)
from kondense.operator.analysis import SLI, Reading
from kondense.operator.rollout import (
    BASE,
    AnalysisDue,
    Decision,
    JobObservation,
    JobState,
    World,
    analysis_due,
    reconcile,
    topology,
)
from kondense.operator.routers import ReplicaRouter
from kondense_testing.builders import digits_body, digits_spec, job_result, sha
from kondense_testing.rollouts import DOWN, GOOD, SLOW, finished_jobs, settled_world

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def canary(status: CompressedModelStatus) -> CanaryStatus:
    assert status.canary is not None
    return status.canary


class Driver:
    """Feeds the state machine like the shell does: status in, status out."""

    def __init__(self, spec: CompressedModelSpec) -> None:
        self.spec = spec
        self.status = CompressedModelStatus()
        self.now = T0
        self.generation = 1

    def tick(self, world: World, advance: float = 0.0) -> Decision:
        self.now += timedelta(seconds=advance)
        if world.readings is not None:
            due = analysis_due(self.spec, self.status, world, self.now)
            assert due is not AnalysisDue.NONE, "the shell only reads SLIs when due"
            world = replace(world, due=due)
        decision = reconcile(self.spec, self.status, self.generation, world, self.now)
        self.status = decision.status
        return decision

    def analyse(self, readings: list[Reading]) -> Decision:
        """Bring the current canary's pods up if needed, then one analysis an interval later."""
        if canary(self.status).readyAt is None:
            self.tick(self.serving(), advance=1)
        return self.tick(
            replace(self.serving(), readings=readings), advance=self.spec.rollout.interval_seconds()
        )

    def serving(self, stable_sha: str | None = None, canary_ready: int = 1) -> World:
        return settled_world(self.spec, self.status, finished_jobs(), stable_sha, canary_ready)


@pytest.fixture
def driver() -> Driver:
    return Driver(digits_spec())


def to_canary(driver: Driver) -> None:
    first = driver.tick(World())
    assert sorted(first.create_jobs) == sorted([BASE, "int8", "dynamic-int8", "fp16", "slim-int8"])
    assert driver.status.phase is Phase.COMPRESSING
    running = driver.tick(World(jobs={n: JobObservation(JobState.ACTIVE) for n in first.create_jobs}))
    assert running.create_jobs == [] and driver.status.phase is Phase.COMPRESSING
    driver.tick(World(jobs=finished_jobs()))
    if driver.status.phase is Phase.CANARY:
        driver.tick(driver.serving(), advance=1)  # the canary pods come up: the analysis clock starts
        assert canary(driver.status).readyAt is not None


def test_compress_select_and_start_the_canary(driver: Driver) -> None:
    to_canary(driver)
    status = driver.status
    assert status.phase is Phase.CANARY
    phases = {v.name: v.phase for v in status.variants}
    assert phases == {
        "int8": VariantPhase.SUCCEEDED,
        "dynamic-int8": VariantPhase.REJECTED,
        "fp16": VariantPhase.SUCCEEDED,
        "slim-int8": VariantPhase.FAILED,
    }
    assert {v.name: v.reason for v in status.variants}["slim-int8"] == "OOMKilled"
    assert status.selectedVariant == "int8" and status.ladder == ["fp16"]  # smallest first
    selected = next(v for v in status.variants if v.name == status.selectedVariant)
    assert selected.hardware == "Test CPU · int8 avx2 (avx2) · ORT 1.0 CPU"  # evaluation hardware shown
    assert status.stable is not None and status.stable.variant is None  # base model serves
    assert status.canary is not None and status.canary.requestedWeight == 25
    topo = topology(driver.spec, status, ReplicaRouter().split)
    assert topo.stable is not None and topo.canary is not None
    assert (topo.stable.replicas, topo.canary.replicas) == (3, 1)
    assert topo.canary.artifact.sha256 == sha("int8")
    conditions = {c.type: c.status for c in status.conditions}
    assert conditions["Compressed"] == "True" and conditions["Ready"] == "False"


def test_steps_then_promotion_waits_for_stable_then_is_final(driver: Driver) -> None:
    to_canary(driver)
    interval = driver.spec.rollout.interval_seconds()
    world = driver.serving()
    early = driver.now + timedelta(seconds=interval - 1)
    assert analysis_due(driver.spec, driver.status, world, early) is AnalysisDue.CONTINUOUS
    # a continuous analysis that passes records nothing and does not advance the step
    before = driver.status.model_copy(deep=True)
    decision = driver.tick(replace(driver.serving(), readings=GOOD), advance=interval - 1)
    assert decision.analysis is None and driver.status == before
    driver.now -= timedelta(seconds=interval - 1)
    driver.tick(replace(driver.serving(), readings=GOOD), advance=interval)
    assert driver.status.canary and canary(driver.status).requestedWeight == 50
    driver.tick(replace(driver.serving(), readings=GOOD), advance=interval)
    assert canary(driver.status).requestedWeight == 100
    decision = driver.tick(replace(driver.serving(), readings=GOOD), advance=interval)
    assert canary(driver.status).promoting and driver.status.phase is Phase.CANARY
    assert any(e.reason == "Promoting" for e in decision.events)
    # stable rolls to int8's artifact at full size while the canary still serves
    topo = topology(driver.spec, driver.status, ReplicaRouter().split)
    assert topo.stable and topo.stable.artifact.sha256 == sha("int8") and topo.stable.replicas == 4
    assert topo.canary and topo.canary.replicas == 4
    # stable still on the old artifact: not promoted yet, whatever happens
    driver.tick(driver.serving(stable_sha=sha(BASE)), advance=1)
    assert driver.status.phase is Phase.CANARY
    decision = driver.tick(driver.serving(), advance=1)
    assert driver.status.phase is Phase.PROMOTED
    assert driver.status.stable and driver.status.stable.variant == "int8"
    assert [e.reason for e in decision.events].count("Promoted") == 1
    # promoted: the canary Deployment goes away; further ticks change nothing and never re-promote
    assert topology(driver.spec, driver.status, ReplicaRouter().split).canary is None
    again = driver.tick(driver.serving(), advance=60)
    assert again.events == [] and again.create_jobs == [] and driver.status.phase is Phase.PROMOTED


def test_latency_breach_rolls_back_with_evidence_and_tries_the_next_variant(driver: Driver) -> None:
    to_canary(driver)
    interval = driver.spec.rollout.interval_seconds()
    driver.tick(replace(driver.serving(), readings=SLOW), advance=interval)  # 1 failure tolerated
    assert driver.status.phase is Phase.CANARY and canary(driver.status).failedChecks == 1
    decision = driver.tick(replace(driver.serving(), readings=SLOW), advance=interval)
    status = driver.status
    assert {v.name: v.phase for v in status.variants}["int8"] is VariantPhase.ROLLED_BACK
    assert any(e.reason == "RolledBack" and e.type == "Warning" for e in decision.events)
    breach = [c for c in canary(status).checks if c.sli == "p99LatencyMs" and not c.passed]
    assert (
        breach and breach[-1].value == 180.0 and breach[-1].threshold == 50 and breach[-1].variant == "int8"
    )
    assert breach[-1].window
    # the next variant of the ladder starts over at the first step, stable at full weight first
    assert status.selectedVariant == "fp16" and canary(status).step == 0 and canary(status).failedChecks == 0
    topo = topology(driver.spec, status, ReplicaRouter().split)
    assert topo.canary and topo.canary.artifact.sha256 == sha("fp16")


def test_ladder_exhausted_means_rolled_back_and_stable_keeps_the_base(driver: Driver) -> None:
    to_canary(driver)
    for _ in range(4):
        driver.analyse(SLOW)
    assert driver.status.phase is Phase.ROLLED_BACK
    topo = topology(driver.spec, driver.status, ReplicaRouter().split)
    assert topo.canary is None and topo.stable and topo.stable.artifact.sha256 == sha(BASE)
    assert topo.stable.replicas == 4


def test_prometheus_down_holds_then_rolls_back_never_promotes(driver: Driver) -> None:
    to_canary(driver)
    interval = driver.spec.rollout.interval_seconds()
    driver.tick(replace(driver.serving(), readings=DOWN), advance=interval)
    assert canary(driver.status).requestedWeight == 25  # held, not advanced
    assert {c.type: c.reason for c in driver.status.conditions}["CanaryHealthy"] == "NoData"
    driver.tick(replace(driver.serving(), readings=DOWN), advance=interval)
    assert {v.name: v.reason for v in driver.status.variants}["int8"] == "NoData"
    for _ in range(2):
        driver.analyse(DOWN)
    assert driver.status.phase is Phase.ROLLED_BACK
    assert all(v.phase is not VariantPhase.PROMOTED for v in driver.status.variants)


def test_restart_replays_the_same_decision_without_acting_twice(driver: Driver) -> None:
    to_canary(driver)
    interval = driver.spec.rollout.interval_seconds()
    for _ in range(3):
        driver.tick(replace(driver.serving(), readings=GOOD), advance=interval)
    saved = driver.status.model_copy(deep=True)  # written to the resource before the operator died
    assert saved.canary and saved.canary.promoting
    # a new operator process starts from the stored status: same decision, no second promotion
    restarted = Driver(driver.spec)
    restarted.status, restarted.now = saved, driver.now
    decision = restarted.tick(restarted.serving(), advance=2)
    assert restarted.status.phase is Phase.PROMOTED
    assert [e.reason for e in decision.events] == ["Promoted"]
    assert restarted.tick(restarted.serving(), advance=2).events == []


def test_no_analysis_before_the_canary_serves_then_a_failed_check_when_overdue() -> None:
    driver = Driver(digits_spec())
    driver.tick(World())
    driver.tick(World(jobs=finished_jobs()))
    starting = replace(driver.serving(), canary=None)  # the canary pods are not up
    interval = driver.spec.rollout.interval_seconds()
    soon = driver.now + timedelta(seconds=interval * 3)
    assert analysis_due(driver.spec, driver.status, starting, soon) is AnalysisDue.NONE
    late = driver.now + timedelta(seconds=130)
    assert analysis_due(driver.spec, driver.status, starting, late) is AnalysisDue.INTERVAL
    driver.tick(replace(starting, readings=GOOD), advance=130)
    check = canary(driver.status).checks[-1]
    assert not check.passed and "canary pods not serving int8 after 130s" in (check.message or "")
    assert canary(driver.status).failedChecks == 1


def test_lost_jobs_are_created_again_after_a_restart(driver: Driver) -> None:
    first = driver.tick(World())
    # the operator died after writing status but before creating the Jobs
    again = driver.tick(World(), advance=2)
    assert sorted(again.create_jobs) == sorted(first.create_jobs)


def test_no_variant_within_budget_fails_with_every_delta_named() -> None:
    driver = Driver(digits_spec(selection={"maxAccuracyDelta": 0.0001}))
    jobs = finished_jobs()
    jobs["fp16"] = JobObservation(JobState.SUCCEEDED, result=job_result("fp16", delta=0.002, size=0.5))
    driver.tick(World())
    driver.tick(World(jobs=jobs))
    status = driver.status
    assert status.phase is Phase.FAILED
    assert "int8: accuracy delta 0.0040 > budget" in (status.message or "")
    assert "fp16: accuracy delta 0.0020 > budget" in (status.message or "")
    assert "slim-int8: failed (OOMKilled)" in (status.message or "")
    # the base model keeps serving
    topo = topology(driver.spec, status, ReplicaRouter().split)
    assert topo.stable and topo.stable.artifact.sha256 == sha(BASE) and topo.canary is None


def test_job_without_readable_result_fails_that_variant_only(driver: Driver) -> None:
    jobs = finished_jobs()
    jobs["int8"] = JobObservation(JobState.SUCCEEDED, message="unreadable result in the termination message")
    driver.tick(World())
    driver.tick(World(jobs=jobs))
    reasons = {v.name: v.reason for v in driver.status.variants}
    assert reasons["int8"] == "UnreadableResult"
    assert driver.status.phase is Phase.CANARY and driver.status.selectedVariant == "fp16"


def test_spec_changes_restart_from_the_earliest_affected_stage(driver: Driver) -> None:
    to_canary(driver)
    # rollout-only change: re-select and redeploy, no new compression Jobs
    body = driver.spec.model_dump(mode="json", exclude_none=True)
    body["rollout"]["steps"] = [50, 100]
    driver.spec = CompressedModelSpec.model_validate(body)
    driver.generation = 2
    decision = driver.tick(driver.serving(), advance=1)
    assert decision.create_jobs == []
    assert driver.status.phase is Phase.CANARY and canary(driver.status).requestedWeight == 50
    assert driver.status.observedGeneration == 2
    # a target change: compress again
    body["targets"] = body["targets"][:1]
    driver.spec = CompressedModelSpec.model_validate(body)
    driver.generation = 3
    decision = driver.tick(driver.serving(), advance=1)
    assert sorted(decision.create_jobs) == [BASE, "int8"]
    assert driver.status.phase is Phase.COMPRESSING and [v.name for v in driver.status.variants] == ["int8"]
    # stable keeps serving what it served while compressing again
    assert driver.status.stable and driver.status.stable.artifact


# ------------------------------------------------------------------------------------------------
# continuous analysis and abort thresholds (issue 17)

ERRORS_50 = [*GOOD[:2], Reading(SLI.ERROR_RATE, 0.5), *GOOD[3:]]
FEW = [Reading(SLI.REQUESTS, 5), *ERRORS_50[1:]]  # below minRequests (20)


def continuous(driver: Driver, readings: list[Reading], advance: float) -> Decision:
    world = driver.serving()
    due = analysis_due(driver.spec, driver.status, world, driver.now + timedelta(seconds=advance))
    assert due is AnalysisDue.CONTINUOUS
    return driver.tick(replace(world, readings=readings), advance=advance)


@pytest.mark.parametrize(
    ("readings", "advance", "outcome"),
    [
        # a severe breach rolls back on the first continuous analysis, whatever failureLimit
        (ERRORS_50, 2, "rolled back"),
        # too few samples: no verdict at all between intervals (the interval decides no-data)
        (FEW, 2, "unchanged"),
        # an ordinary breach counts at once (tolerated by failureLimit 1)
        (SLOW, 2, "failed check"),
        # a pass between intervals records nothing
        (GOOD, 2, "unchanged"),
    ],
)
def test_continuous_analysis_acts_only_on_breaches(
    driver: Driver, readings: list[Reading], advance: float, outcome: str
) -> None:
    to_canary(driver)
    before = driver.status.model_copy(deep=True)
    decision = continuous(driver, readings, advance)
    status = driver.status
    if outcome == "unchanged":
        assert status == before and decision.events == []
    elif outcome == "failed check":
        assert canary(status).failedChecks == 1 and status.selectedVariant == "int8"
        assert [e.reason for e in decision.events] == ["CheckFailed"]
    else:
        int8 = {v.name: v for v in status.variants}["int8"]
        assert int8.phase is VariantPhase.ROLLED_BACK and int8.reason == "Abort"
        assert "abortAt 0.1" in (int8.message or "")
        assert [e.reason for e in decision.events][:2] == ["Aborted", "RolledBack"]
        assert status.selectedVariant == "fp16" and canary(status).requestedWeight == 25


def test_two_ordinary_breaches_roll_back_before_the_interval_on_fresh_samples(driver: Driver) -> None:
    to_canary(driver)
    interval = driver.spec.rollout.interval_seconds()
    continuous(driver, SLOW, 2)
    assert canary(driver.status).failedChecks == 1
    # the next counted check needs a fresh window: nothing is due on the very next tick
    soon = driver.now + timedelta(seconds=2)
    assert analysis_due(driver.spec, driver.status, driver.serving(), soon) is AnalysisDue.NONE
    decision = continuous(driver, SLOW, 4)
    assert {v.name: v.phase for v in driver.status.variants}["int8"] is VariantPhase.ROLLED_BACK
    assert any(e.reason == "RolledBack" for e in decision.events)
    breach = [c for c in canary(driver.status).checks if c.sli == "p99LatencyMs" and c.variant == "int8"]
    assert [(c.value, c.window, c.passed) for c in breach] == [(180.0, "4s", False)] * 2
    assert interval > 2 + 4  # both counted, and rolled back, before the first interval analysis


def test_abort_threshold_applies_at_the_interval_too_whatever_failure_limit() -> None:
    body = digits_body()["spec"]
    body["rollout"]["failureLimit"] = 3
    driver = Driver(CompressedModelSpec.model_validate(body))
    to_canary(driver)
    driver.analyse(ERRORS_50)
    assert {v.name: v.reason for v in driver.status.variants}["int8"] == "Abort"


def test_abort_defaults_and_validation() -> None:
    from pydantic import ValidationError

    from kondense.api.resource import AnalysisSpec
    from kondense.operator.analysis import abort_thresholds

    spec = AnalysisSpec.model_validate(
        {
            "p99LatencyMs": {"max": 50},
            "errorRate": {"max": 0.2},
            "accuracyDelta": {"max": 0.02, "abortAt": 0.05},
        }
    )
    assert abort_thresholds(spec) == {SLI.P99_LATENCY_MS: 500, SLI.ERROR_RATE: 1.0, SLI.ACCURACY_DELTA: 0.05}
    with pytest.raises(ValidationError, match="abortAt: must be greater than max"):
        AnalysisSpec.model_validate({"p99LatencyMs": {"max": 50, "abortAt": 40}})

"""Bake and instant revert (issue 13), and the relative gates inside the rollout state machine:
driven tick by tick with observed worlds (pure, no I/O)."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from kondense.api.resource import CompressedModelSpec, CompressedModelStatus, Phase, VariantPhase
from kondense.api.validation import validate_object
from kondense.operator.analysis import SLI, Comparison, Reading, TrackSample
from kondense.operator.rollout import (
    BASE,
    AnalysisDue,
    Decision,
    World,
    analysis_due,
    bake_due,
    bake_window,
    reconcile,
    topology,
)
from kondense.operator.routers import ReplicaRouter
from kondense_testing.builders import digits_body, digits_spec, sha
from kondense_testing.rollouts import DOWN, GOOD, finished_jobs, settled_world

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
# what the stable track answers during a bake: it shadows nothing, so no accuracy reading
BAKE_GOOD = [*GOOD[:3], Reading(SLI.ACCURACY_DELTA, None, "no samples")]
BAKE_SLOW = [GOOD[0], Reading(SLI.P99_LATENCY_MS, 180.0), GOOD[2], BAKE_GOOD[3]]
BAKE_DOWN = DOWN[:4]


class Driver:
    """Feeds the state machine like the shell does: status in, status out."""

    def __init__(self, spec: CompressedModelSpec) -> None:
        self.spec = spec
        self.status = CompressedModelStatus()
        self.now = T0

    def tick(self, world: World, advance: float = 0.0) -> Decision:
        self.now += timedelta(seconds=advance)
        if world.readings is not None:
            due = analysis_due(self.spec, self.status, world, self.now)
            if due is AnalysisDue.NONE:
                due = bake_due(self.spec, self.status, self.now)
            assert due is not AnalysisDue.NONE, "the shell only reads SLIs when due"
            world = replace(world, due=due)
        decision = reconcile(self.spec, self.status, 1, world, self.now)
        self.status = decision.status
        return decision

    def serving(self, stable_sha: str | None = None) -> World:
        return settled_world(self.spec, self.status, finished_jobs(), stable_sha)

    def interval(self) -> float:
        return self.spec.rollout.interval_seconds()

    def to_canary(self) -> None:
        self.tick(World())
        self.tick(World(jobs=finished_jobs()))
        assert self.status.phase is Phase.CANARY
        self.tick(self.serving(), advance=1)  # the canary pods serve: the analysis clock starts

    def through_the_steps(self, comparison: Comparison | None = None) -> None:
        for _ in self.spec.rollout.steps:
            self.tick(replace(self.serving(), readings=GOOD, comparison=comparison), advance=self.interval())
        assert self.status.canary is not None and self.status.canary.promoting
        self.tick(self.serving(), advance=1)  # stable settled on the variant's artifact


def baking_driver(bake: str = "60s", **rollout: Any) -> Driver:
    body = digits_body()
    body["spec"]["rollout"].update(bake=bake, **rollout)
    driver = Driver(CompressedModelSpec.model_validate(body["spec"]))
    driver.to_canary()
    driver.through_the_steps()
    return driver


def test_promotion_with_a_bake_keeps_the_previous_artifact_then_releases_it() -> None:
    driver = baking_driver("30s")
    status = driver.status
    assert status.phase is Phase.BAKING
    assert status.stable is not None and status.stable.variant == "int8"
    assert status.bake is not None and status.bake.previous is not None
    assert status.bake.previous.variant is None and status.bake.previous.artifact is not None
    assert status.bake.previous.artifact.sha256 == sha(BASE)  # the base model is kept for a revert
    topo = topology(driver.spec, status, ReplicaRouter().split)
    assert topo.canary is None and topo.stable and topo.stable.artifact.sha256 == sha("int8")
    assert {c.type: c.status for c in status.conditions}["Ready"] == "False"
    # passes for the whole bake: promoted, the previous artifact released
    for _ in range(3):
        decision = driver.tick(replace(driver.serving(), readings=BAKE_GOOD), advance=driver.interval())
    status = driver.status
    assert status.phase is Phase.PROMOTED
    assert status.bake is not None and status.bake.result == "Passed" and status.bake.previous is None
    assert {v.name: v.phase for v in status.variants}["int8"] is VariantPhase.PROMOTED
    assert [e.reason for e in decision.events] == ["Promoted"]
    # the live accuracy gate is not judged while baking (nothing shadows stable): no false no-data
    assert all(c.sli != "accuracyDelta" for c in status.bake.checks)
    assert {c.type: c.status for c in status.conditions}["Ready"] == "True"


def test_a_breach_during_the_bake_reverts_stable_at_once_without_replaying_the_steps() -> None:
    driver = baking_driver("10m")
    decision = driver.tick(replace(driver.serving(), readings=BAKE_SLOW), advance=driver.interval())
    status = driver.status
    assert status.phase is Phase.ROLLED_BACK
    assert status.stable is not None and status.stable.variant is None  # back on the base model
    assert status.stable.artifact is not None and status.stable.artifact.sha256 == sha(BASE)
    assert status.bake is not None and status.bake.result == "Reverted"
    breach = [c for c in status.bake.checks if not c.passed]
    assert breach and breach[0].sli == "p99LatencyMs" and breach[0].value == 180.0
    assert breach[0].threshold == 50 and breach[0].variant == "int8" and breach[0].window
    int8 = {v.name: v for v in status.variants}["int8"]
    assert int8.phase is VariantPhase.ROLLED_BACK and int8.reason == "BakeBreach"
    assert "p99LatencyMs 180 > 50" in (int8.message or "")
    warning = [e for e in decision.events if e.reason == "Reverted"]
    assert warning and warning[0].type == "Warning" and "stable back on base" in warning[0].message
    # the next topology is stable on the previous artifact at full size, no canary, no steps replayed
    topo = topology(driver.spec, status, ReplicaRouter().split)
    assert topo.canary is None and topo.stable is not None
    assert topo.stable.artifact.sha256 == sha(BASE) and topo.stable.replicas == 4
    again = driver.tick(driver.serving(), advance=60)
    assert again.events == [] and driver.status.phase is Phase.ROLLED_BACK


def test_a_breach_between_intervals_reverts_on_the_next_tick() -> None:
    driver = baking_driver("10m")
    assert bake_due(driver.spec, driver.status, driver.now + timedelta(seconds=2)) is AnalysisDue.NONE
    soon = driver.now + timedelta(seconds=5)
    assert bake_due(driver.spec, driver.status, soon) is AnalysisDue.CONTINUOUS
    assert bake_window(driver.spec, driver.status, soon, AnalysisDue.CONTINUOUS) == "5s"
    # a continuous pass records nothing
    before = driver.status.model_copy(deep=True)
    driver.tick(replace(driver.serving(), readings=BAKE_GOOD), advance=5)
    assert driver.status == before
    driver.tick(replace(driver.serving(), readings=BAKE_SLOW), advance=1)
    assert driver.status.phase is Phase.ROLLED_BACK


def test_no_data_during_the_bake_never_passes_it_and_reverts_past_the_failure_limit() -> None:
    driver = baking_driver("10s")  # failureLimit 1
    driver.tick(replace(driver.serving(), readings=BAKE_DOWN), advance=driver.interval())
    status = driver.status
    assert status.phase is Phase.BAKING  # the bake time is over, but no data is never a pass
    assert status.bake is not None and status.bake.failedChecks == 1
    driver.tick(replace(driver.serving(), readings=BAKE_DOWN), advance=driver.interval())
    status = driver.status
    assert status.phase is Phase.ROLLED_BACK
    assert {v.name: v.reason for v in status.variants}["int8"] == "BakeNoData"
    assert status.stable is not None and status.stable.variant is None


def test_the_bake_survives_a_restart() -> None:
    driver = baking_driver("10m")
    stored = CompressedModelStatus.model_validate(driver.status.model_dump(mode="json", exclude_none=True))
    assert stored == driver.status
    driver.status = stored
    driver.tick(replace(driver.serving(), readings=BAKE_SLOW), advance=driver.interval())
    assert driver.status.stable is not None and driver.status.stable.variant is None


def test_without_a_bake_promotion_is_final_at_once() -> None:
    driver = Driver(digits_spec())
    driver.to_canary()
    driver.through_the_steps()
    assert driver.status.phase is Phase.PROMOTED and driver.status.bake is None


@pytest.mark.parametrize(
    ("bake", "interval", "field", "says"),
    [
        ("5s", "10s", "spec.rollout.bake", "at least one interval"),
        ("25h", "10s", "spec.rollout.bake", "at most 86400s"),
        ("soon", "10s", "spec.rollout.bake", "does not match"),
    ],
)
def test_bad_bakes_are_refused_with_their_field(bake: str, interval: str, field: str, says: str) -> None:
    body = digits_body()
    body["spec"]["rollout"].update(bake=bake, interval=interval)
    _, errors = validate_object(body)
    assert any(e.path.startswith(field) and says in e.message for e in errors), errors


# ------------------------------------------------------------------------------------------------
# the relative gates through the state machine


BOUNDS = [0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, math.inf]


def track(median_s: float, seed: int, n: int = 1000) -> TrackSample:
    samples = np.random.default_rng(seed).lognormal(math.log(median_s), 0.3, n)
    return TrackSample(float(n), 0.0, [(le, float(np.sum(samples <= le))) for le in BOUNDS])


def relative_driver() -> Driver:
    body = digits_body()
    body["spec"]["rollout"]["analysis"]["p99LatencyMs"] = {"max": 50, "maxRatioToStable": 1.2}
    driver = Driver(CompressedModelSpec.model_validate(body["spec"]))
    driver.to_canary()
    return driver


def test_a_slower_canary_under_the_absolute_limit_is_rolled_back_by_the_relative_gate() -> None:
    driver = relative_driver()
    slower = Comparison(track(0.006, 1), track(0.004, 2))  # 1.5x slower, p99 ~12 ms < 50 ms
    for _ in range(2):  # failureLimit 1
        driver.tick(replace(driver.serving(), readings=GOOD, comparison=slower), advance=driver.interval())
    status = driver.status
    assert {v.name: v.phase for v in status.variants}["int8"] is VariantPhase.ROLLED_BACK
    assert status.canary is not None and status.selectedVariant == "fp16"
    ratio = [c for c in status.canary.checks if c.sli == "p99LatencyRatio"]
    assert ratio and not ratio[-1].passed and ratio[-1].test == "mann-whitney-u"
    assert ratio[-1].pValue is not None and ratio[-1].pValue < 0.05
    assert ratio[-1].canaryValue and ratio[-1].stableValue and ratio[-1].variant == "int8"


def test_a_same_speed_canary_is_promoted_and_the_last_step_needs_no_stable_traffic() -> None:
    driver = relative_driver()
    same = Comparison(track(0.004, 3), track(0.004, 4))
    for _ in range(2):  # 25 % and 50 %: judged against stable
        driver.tick(replace(driver.serving(), readings=GOOD, comparison=same), advance=driver.interval())
    assert driver.status.canary is not None and driver.status.canary.requestedWeight == 100
    # at 100 % stable serves nothing: no stable samples, and that is not no data
    idle = Comparison(track(0.004, 5), TrackSample(0.0, 0.0, None, "latency: no samples"))
    driver.tick(replace(driver.serving(), readings=GOOD, comparison=idle), advance=driver.interval())
    assert driver.status.canary.promoting
    judged = [c.passed for c in driver.status.canary.checks if c.sli == "p99LatencyRatio"]
    assert judged == [True, True]


def test_relative_gates_are_judged_at_interval_analyses_only() -> None:
    """A test on every tick over overlapping samples would make false rollbacks likelier than alpha:
    the continuous analysis between intervals leaves the relative gates out."""
    driver = relative_driver()
    slower = Comparison(track(0.006, 1), track(0.004, 2))
    decision = driver.tick(replace(driver.serving(), readings=GOOD, comparison=slower), advance=5)
    assert decision.analysis is None  # a continuous pass: nothing recorded, nothing counted
    assert driver.status.canary is not None and driver.status.canary.failedChecks == 0
    decision = driver.tick(
        replace(driver.serving(), readings=GOOD, comparison=slower), advance=driver.interval()
    )
    assert decision.analysis is not None and driver.status.canary.failedChecks == 1


def test_during_a_bake_stable_alone_serves_and_the_load_test_keeps_running() -> None:
    """The topology says "baking" (the shell keeps the load generator for the gates; the bake-revert
    scenario checks the load reaches stable); after the revert it does not."""
    driver = baking_driver("60s")
    topo = topology(driver.spec, driver.status, ReplicaRouter().split)
    assert topo.baking and topo.canary is None and topo.stable is not None and topo.stable.replicas == 4
    driver.tick(replace(driver.serving(), readings=BAKE_SLOW), advance=driver.interval())
    assert not topology(driver.spec, driver.status, ReplicaRouter().split).baking

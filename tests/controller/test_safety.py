"""Safe by default (issue 11): gates that cannot all be off, and numbers from outside judged before
they decide anything. Pure: the state machine and the analysis, driven with observed worlds."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kondense.api.artifacts import ArtifactRef, JobResult, VariantMetrics
from kondense.api.resource import (
    AnalysisSpec,
    CanaryStatus,
    CompressedModelSpec,
    CompressedModelStatus,
    Phase,
    VariantPhase,
)
from kondense.api.validation import validate_object
from kondense.operator.analysis import INFINITE_READING, SLI, Reading, Verdict, analyse
from kondense.operator.rollout import (
    BASE,
    JobObservation,
    JobState,
    World,
    analysis_due,
    metrics_problem,
    parse_time,
    reconcile,
)
from kondense_testing.builders import DIGITS, job_result, sha
from kondense_testing.crd_schema import violations
from kondense_testing.rollouts import settled_world

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def spec_without_thresholds() -> CompressedModelSpec:
    body = copy.deepcopy(DIGITS)
    body["spec"]["rollout"]["analysis"] = {"window": "30s", "minRequests": 20}  # no gate written
    return CompressedModelSpec.model_validate(body["spec"])


class Driver:
    def __init__(self, spec: CompressedModelSpec, jobs: dict[str, JobObservation]) -> None:
        self.spec, self.jobs = spec, jobs
        self.status = CompressedModelStatus()
        self.now = T0

    def tick(self, world: World, advance: float = 0.0) -> Any:
        self.now += timedelta(seconds=advance)
        decision = reconcile(self.spec, self.status, 1, world, self.now)
        self.status = decision.status
        return decision

    def serving(self) -> World:
        return settled_world(self.spec, self.status, self.jobs)

    def to_canary(self) -> None:
        self.tick(World())
        self.tick(World(jobs=self.jobs))
        assert self.status.phase is Phase.CANARY, self.status.message
        self.tick(self.serving(), advance=1)

    def analyse(self, readings: list[Reading]) -> Any:
        if self.status.canary is not None and self.status.canary.readyAt is None:
            self.tick(self.serving(), advance=1)  # the next variant's pods come up
        world = replace(self.serving(), readings=readings)
        self.now += timedelta(seconds=self.spec.rollout.interval_seconds())
        assert analysis_due(self.spec, self.status, world, self.now)
        return self.tick(world)


def good_jobs() -> dict[str, JobObservation]:
    done = JobState.SUCCEEDED
    return {
        BASE: JobObservation(done, result=job_result(BASE, size=1.0)),
        "int8": JobObservation(done, result=job_result("int8", delta=0.004, size=0.26)),
        "dynamic-int8": JobObservation(done, result=job_result("dynamic-int8", delta=0.005, size=0.27)),
        "fp16": JobObservation(done, result=job_result("fp16", delta=0.0, size=0.5)),
        "slim-int8": JobObservation(done, result=job_result("slim-int8", delta=0.001, size=0.3)),
    }


# ---------------------------------------------------------------------------------------------
# 1. no gate written still means an error-rate gate


def test_canary_answering_only_errors_with_no_thresholds_is_rolled_back() -> None:
    spec = spec_without_thresholds()
    assert spec.rollout.analysis.p99LatencyMs is None and spec.rollout.analysis.accuracyDelta is None
    driver = Driver(spec, good_jobs())
    driver.to_canary()
    all_errors = [Reading(SLI.REQUESTS, 500.0), Reading(SLI.ERROR_RATE, 1.0)]  # 100 % HTTP 500
    for _ in range(4 * (spec.rollout.failureLimit + 1)):
        if driver.status.phase is not Phase.CANARY:
            break
        decision = driver.analyse(all_errors)
        assert not any(e.reason in ("Promoting", "CanaryStep") for e in decision.events)
    assert driver.status.phase is Phase.ROLLED_BACK
    assert driver.status.stable is not None and driver.status.stable.variant is None  # base keeps serving
    rolled = [v for v in driver.status.variants if v.phase is VariantPhase.ROLLED_BACK]
    assert rolled and all("errorRate 1 > 0.01" in (v.message or "") for v in rolled)


def test_default_error_rate_gate_is_in_force_and_documented() -> None:
    spec = AnalysisSpec()
    assert spec.errorRate.max == 0.01
    from kondense.api.crd import spec_schema

    node = spec_schema()["properties"]["rollout"]["properties"]["analysis"]["properties"]["errorRate"]
    assert "0.01" in node["description"]


def _body_with_analysis(analysis: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(DIGITS)
    body["spec"]["rollout"]["analysis"] = analysis
    return body


@pytest.mark.parametrize(
    ("analysis", "off"),
    [
        ({"errorRate": {"max": 1}}, True),
        ({"errorRate": {"max": 1.0}, "accuracyDelta": {"max": 1}}, True),
        ({"errorRate": {"max": 1}, "accuracyDelta": {"max": 0.5}}, False),
        ({"errorRate": {"max": 1}, "p99LatencyMs": {"max": 100}}, False),
        ({"errorRate": {"max": 0.99}}, False),
        ({}, False),  # the default error-rate gate
    ],
)
def test_a_spec_cannot_switch_every_gate_off(analysis: dict[str, Any], off: bool) -> None:
    body = _body_with_analysis(analysis)
    _, errors = validate_object(body)
    crd = violations(body)
    if off:
        assert [e.path for e in errors] == ["spec.rollout.analysis.errorRate.max"]
        assert "every analysis gate is off" in errors[0].message
        assert [v.path for v in crd] == ["spec.rollout.analysis.errorRate.max"]
    else:
        assert errors == [] and crd == []


def test_a_null_error_rate_does_not_switch_the_gate_off() -> None:
    _, errors = validate_object(_body_with_analysis({"errorRate": None}))
    assert [e.path for e in errors] == ["spec.rollout.analysis.errorRate"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e309, 600_001])
def test_non_finite_or_huge_thresholds_are_refused(bad: float) -> None:
    for analysis in ({"p99LatencyMs": {"max": bad}}, {"errorRate": {"max": bad}}):
        _, errors = validate_object(_body_with_analysis(analysis))
        assert errors and errors[0].path.startswith("spec.rollout.analysis."), errors


# ---------------------------------------------------------------------------------------------
# 7. numbers from outside

GATES = AnalysisSpec(
    window="30s",
    minRequests=20,
    p99LatencyMs={"max": 50},
    errorRate={"max": 0.01},
    accuracyDelta={"max": 0.02},
)


def readings(**values: float | None) -> list[Reading]:
    base: dict[SLI, float | None] = {
        SLI.REQUESTS: 100.0,
        SLI.P99_LATENCY_MS: 5.0,
        SLI.ERROR_RATE: 0.0,
        SLI.ACCURACY_DELTA: 0.0,
    }
    for key, value in values.items():
        base[SLI(key)] = value
    return [Reading(sli, value) for sli, value in base.items()]


@pytest.mark.parametrize(
    ("values", "verdict", "failing", "says"),
    [
        ({}, Verdict.PASS, [], None),
        # +Inf is past any abortAt: a severe breach (rolled back at once), never no data
        ({"p99LatencyMs": math.inf}, Verdict.ABORT, ["p99LatencyMs"], "+Inf > 50"),
        ({"accuracyDelta": math.inf}, Verdict.ABORT, ["accuracyDelta"], "+Inf > 0.02"),
        ({"p99LatencyMs": math.nan}, Verdict.NO_DATA, ["p99LatencyMs"], "NaN"),
        ({"errorRate": math.nan}, Verdict.NO_DATA, ["errorRate"], "NaN"),
        ({"errorRate": -0.5}, Verdict.NO_DATA, ["errorRate"], "negative"),
        ({"accuracyDelta": -1.0}, Verdict.NO_DATA, ["accuracyDelta"], "negative"),
        ({"p99LatencyMs": -math.inf}, Verdict.NO_DATA, ["p99LatencyMs"], "negative"),
        ({"requests": math.nan}, Verdict.NO_DATA, ["requests"], "NaN"),
        ({"requests": math.inf}, Verdict.NO_DATA, ["requests"], "+Inf requests"),
        ({"requests": -100.0}, Verdict.NO_DATA, ["requests"], "negative"),
        ({"errorRate": -0.5, "p99LatencyMs": math.inf}, Verdict.ABORT, ["p99LatencyMs", "errorRate"], None),
    ],
)
def test_readings_are_judged_before_they_are_compared(
    values: dict[str, float], verdict: Verdict, failing: list[str], says: str | None
) -> None:
    result = analyse(GATES, readings(**values), "t")
    assert result.verdict is verdict
    assert [c.sli for c in result.checks if not c.passed] == failing
    for check in result.checks:
        assert check.value is None or math.isfinite(check.value)  # status is JSON
        if not check.passed and check.value is not None:
            assert check.threshold is not None and check.value > check.threshold
    if says:
        assert any(says in (c.message or "") for c in result.checks if not c.passed)
    CompressedModelStatus(canary=CanaryStatus(checks=result.checks)).model_dump_json()


def test_an_infinite_p99_rolls_back_and_status_stays_json() -> None:
    driver = Driver(CompressedModelSpec.model_validate(DIGITS["spec"]), good_jobs())  # p99 gate 50 ms
    driver.to_canary()
    first = driver.status.selectedVariant
    for _ in range(driver.spec.rollout.failureLimit + 1):
        driver.analyse(readings(p99LatencyMs=math.inf))
    assert first == "int8" and driver.status.selectedVariant != "int8"
    int8 = next(v for v in driver.status.variants if v.name == "int8")
    assert int8.phase is VariantPhase.ROLLED_BACK and "+Inf" in (int8.message or "")
    assert "Infinity" not in driver.status.model_dump_json() and "NaN" not in driver.status.model_dump_json()


def _result(name: str, **metrics: float) -> JobResult:
    values = {"sizeRatio": 0.3, "p50Ms": 0.2, "p99Ms": 0.4, "accuracyDelta": 0.0, **metrics}
    return JobResult.model_construct(
        name=name,
        ok=True,
        reason="Succeeded",
        artifact=ArtifactRef(sha256=sha(name), sizeBytes=1000),
        metrics=VariantMetrics.model_construct(None, **values),
        technique=name,
        message=None,
    )


@pytest.mark.parametrize(
    ("metrics", "says"),
    [
        ({"accuracyDelta": math.nan}, "metrics.accuracyDelta is nan"),
        ({"accuracyDelta": math.inf}, "metrics.accuracyDelta is inf"),
        ({"accuracyDelta": -math.inf}, "metrics.accuracyDelta is -inf"),
        ({"accuracyDelta": -3.0}, "metrics.accuracyDelta is -3 (must be >= -1)"),
        ({"sizeRatio": math.nan}, "metrics.sizeRatio is nan"),
        ({"sizeRatio": -0.5}, "metrics.sizeRatio is -0.5 (must be >= 0)"),
        ({"p50Ms": math.inf}, "metrics.p50Ms is inf"),
    ],
)
def test_a_job_result_with_unusable_numbers_fails_its_variant(metrics: dict[str, float], says: str) -> None:
    jobs = good_jobs()
    jobs["int8"] = JobObservation(JobState.SUCCEEDED, result=_result("int8", **metrics))
    driver = Driver(CompressedModelSpec.model_validate(DIGITS["spec"]), jobs)
    driver.tick(World())
    driver.tick(World(jobs=jobs))
    int8 = next(v for v in driver.status.variants if v.name == "int8")
    assert int8.phase is VariantPhase.FAILED and int8.reason == "InvalidMetrics"
    assert says in (int8.message or "")
    assert driver.status.selectedVariant != "int8"  # another variant goes first
    assert driver.status.phase is Phase.CANARY


def test_a_variant_better_than_its_base_is_not_invalid() -> None:
    assert metrics_problem(VariantMetrics(accuracyDelta=-0.02, sizeRatio=0.3)) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-22T10:00:00Z", T0),
        ("2026-11-22T10:00:00+00:00", T0),
        ("2026-11-22T12:00:00+02:00", T0),
        ("2026-11-22T10:00:00", T0),  # no zone: UTC
        ("2026-11-22 10:00:00", T0),
        ("yesterday", None),
        ("", None),
        (None, None),
        ("9" * 100, None),
    ],
)
def test_status_timestamps_parse_strictly(text: str | None, expected: datetime | None) -> None:
    assert parse_time(text) == expected


def test_naive_or_garbage_timestamps_in_status_never_stop_the_loop() -> None:
    driver = Driver(CompressedModelSpec.model_validate(DIGITS["spec"]), good_jobs())
    driver.to_canary()
    canary = driver.status.canary
    assert canary is not None
    canary.readyAt = "2026-11-22T10:00:01"  # no zone (e.g. edited by hand)
    canary.stepStartedAt = "not a time"
    canary.lastAnalysisAt = None
    world = replace(driver.serving(), readings=readings())
    driver.now += timedelta(minutes=5)
    assert analysis_due(driver.spec, driver.status, world, driver.now)  # no TypeError
    decision = driver.tick(world)
    warnings = [e.message for e in decision.events if e.reason == "BadTimestamp"]
    assert any("readyAt" in m and "read as UTC" in m for m in warnings)
    assert any("stepStartedAt" in m and "ignored" in m for m in warnings)
    after = driver.status.canary
    assert after is not None and after.readyAt == "2026-11-22T10:00:01Z"
    assert any(e.reason == "CanaryStep" for e in decision.events)  # the analysis ran and passed


def test_infinite_reading_constant_is_finite() -> None:
    assert math.isfinite(INFINITE_READING)


@pytest.mark.parametrize(
    ("raw", "dropped"),
    [
        ({"phase": "Canary"}, []),
        ({"phase": "Bogus"}, ["status.phase"]),
        ({"canary": {"weight": 500, "step": 1}}, ["status.canary.weight"]),
        (
            {"canary": {"checks": [{"time": "t", "sli": "x", "passed": True}, {"time": 1}]}},
            ["status.canary.checks[1].time", "status.canary.checks[1]"],
        ),
        (
            {"variants": "nope", "conditions": [{"type": "Ready"}]},
            ["status.variants", "status.conditions[0]"],
        ),
        ([1, 2], ["status"]),
        (None, []),
    ],
)
def test_a_stored_status_is_read_without_its_bad_fields(raw: Any, dropped: list[str]) -> None:
    from kondense.operator.controller import parse_status

    status, gone = parse_status(raw)
    assert gone == dropped
    assert isinstance(status, CompressedModelStatus)


ANY_READING = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))


@settings(max_examples=300, deadline=None)
@given(requests=ANY_READING, p99=ANY_READING, err=ANY_READING, acc=ANY_READING)
def test_no_reading_from_outside_breaks_or_fools_the_analysis(
    requests: float | None, p99: float | None, err: float | None, acc: float | None
) -> None:
    values = {SLI.REQUESTS: requests, SLI.P99_LATENCY_MS: p99, SLI.ERROR_RATE: err, SLI.ACCURACY_DELTA: acc}
    result = analyse(GATES, [Reading(sli, value) for sli, value in values.items()], "t")
    json.dumps([c.model_dump(mode="json") for c in result.checks], allow_nan=False)  # status stays JSON
    usable = {sli: v is not None and not math.isnan(v) and v >= 0 for sli, v in values.items()}
    if result.verdict is Verdict.PASS:
        assert all(usable.values()) and requests is not None and math.isfinite(requests)
        assert requests >= GATES.minRequests
        assert p99 is not None and p99 <= 50 and err is not None and err <= 0.01
        assert acc is not None and acc <= 0.02
    enough = usable[SLI.REQUESTS] and requests is not None and math.isfinite(requests) and requests >= 20
    if enough and p99 == math.inf:
        assert result.verdict is Verdict.ABORT  # +Inf p99 is a severe breach, whatever else is missing


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_a_termination_message_with_a_non_finite_delta_fails_the_variant(literal: str) -> None:
    from kondense.operator.controller import job_observation

    good = job_result("int8", delta=0.004).model_dump_json()
    message = good.replace('"accuracyDelta":0.004', f'"accuracyDelta":{literal}')
    assert literal in message
    job = {"status": {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}}
    pod = {
        "metadata": {"name": "p", "creationTimestamp": "2026-11-22T10:00:00Z"},
        "status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 0, "message": message}}}]},
    }
    jobs = good_jobs()
    jobs["int8"] = job_observation(job, [pod])
    driver = Driver(CompressedModelSpec.model_validate(DIGITS["spec"]), jobs)
    driver.tick(World())
    driver.tick(World(jobs=jobs))
    int8 = next(v for v in driver.status.variants if v.name == "int8")
    assert int8.phase is VariantPhase.FAILED and int8.reason == "InvalidMetrics"
    assert "metrics.accuracyDelta" in (int8.message or "")
    json.loads(driver.status.model_dump_json())  # and status stays JSON

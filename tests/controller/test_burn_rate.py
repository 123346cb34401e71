"""The error-budget burn-rate gate (issue 13): the canary's error rate over the analysis window divided
by the SLO's error budget; a burn above maxBurn is a breach. Pure, table-driven: pass, breach, too few
samples, no data; the gate in a bake; the spec's validation."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from kondense.api.resource import AnalysisSpec
from kondense.api.validation import validate_object
from kondense.operator.analysis import INFINITE_READING, SLI, Reading, Verdict, analyse
from kondense_testing.builders import digits_body, sha
from kondense_testing.crd_schema import violations

from .test_bake import Driver, baking_driver

NOW = "2026-01-01T00:00:00Z"
BURN = "errorBudgetBurn"
# a 99.9 % SLO, page at 4x: the gate breaches above an error rate of 0.004; errorRate.max stays far above
SPEC = AnalysisSpec(
    window="1m", minRequests=100, errorRate={"max": 0.5, "burnRate": {"budget": 0.001, "maxBurn": 4}}
)


def readings(requests: float | None, error_rate: float | None, why: str | None = None) -> list[Reading]:
    return [Reading(SLI.REQUESTS, requests, why), Reading(SLI.ERROR_RATE, error_rate, why)]


@pytest.mark.parametrize(
    ("requests", "error_rate", "verdict", "burn", "passed"),
    [
        (1000, 0.0, Verdict.PASS, 0.0, True),  # no error: nothing burns
        (1000, 0.002, Verdict.PASS, 2.0, True),  # 2x: under the page threshold
        (1000, 0.004, Verdict.PASS, 4.0, True),  # exactly maxBurn is not above it
        (1000, 0.006, Verdict.FAIL, 6.0, False),  # 6x: a breach although errorRate.max 0.5 passes
        # +Inf burns at +Inf (and is past errorRate's abortAt)
        (1000, math.inf, Verdict.ABORT, INFINITE_READING, False),
        (99, 0.006, Verdict.NO_DATA, None, False),  # too few samples: no data, whatever the rate
        (1000, None, Verdict.NO_DATA, None, False),  # no error-rate reading: no data, never a pass
        (1000, math.nan, Verdict.NO_DATA, None, False),  # an invalid reading is no data too
        (None, None, Verdict.NO_DATA, None, False),  # Prometheus down
    ],
)
def test_burn_rate_gate(
    requests: float | None, error_rate: float | None, verdict: Verdict, burn: float | None, passed: bool
) -> None:
    analysis = analyse(SPEC, readings(requests, error_rate), NOW)
    assert analysis.verdict is verdict
    checks = {c.sli: c for c in analysis.checks}
    if requests is None or requests < SPEC.minRequests:  # judged by the minimum sample count alone
        assert list(checks) == [SLI.REQUESTS.value] and checks["requests"].threshold == 100
        assert "need 100 in 1m: no data" in (checks["requests"].message or "")
        return
    check = checks[BURN]
    assert check.threshold == 4 and check.window == "1m" and check.passed is passed
    assert check.value == (pytest.approx(burn) if burn is not None else None)
    if burn is None:
        assert "error rate: " in (check.message or "") and "no data, counts as a failure" in (
            check.message or ""
        )
        assert check.canaryValue is None
    else:  # the reading, the budget and the burn, in the check
        rate = error_rate if error_rate is not None and math.isfinite(error_rate) else INFINITE_READING
        assert check.canaryValue == pytest.approx(rate)
        assert "/ budget 0.001 = burn" in (check.message or "")
        assert ("> maxBurn 4" if not passed else "<= maxBurn 4") in (check.message or "")
    # errorRate.max (0.5) judges the same reading on its own: the burn gate is one more rule
    assert checks["errorRate"].passed is (error_rate is not None and error_rate <= 0.5)


def test_the_burn_breach_counts_like_any_breach_and_the_reason_is_kept() -> None:
    down = readings(1000, None, "Prometheus at http://p:9090 unreachable: ConnectError")
    check = {c.sli: c for c in analyse(SPEC, down, NOW).checks}[BURN]
    assert check.value is None and "unreachable: ConnectError" in (check.message or "")
    analysis = analyse(SPEC, readings(1000, 0.006), NOW)
    assert [c.sli for c in analysis.breaches] == [BURN] and analysis.breached


def test_without_the_gate_there_is_no_burn_check() -> None:
    plain = AnalysisSpec(errorRate={"max": 0.5})
    assert all(c.sli != BURN for c in analyse(plain, readings(1000, 0.006), NOW).checks)


def test_a_burn_during_the_bake_reverts_at_once() -> None:
    driver: Driver = baking_driver(
        "10m", analysis={"errorRate": {"max": 0.5, "burnRate": {"budget": 0.001, "maxBurn": 4}}}
    )
    burning = [Reading(SLI.REQUESTS, 500), Reading(SLI.P99_LATENCY_MS, 4.0), Reading(SLI.ERROR_RATE, 0.01)]
    driver.tick(replace(driver.serving(stable_sha=sha("int8")), readings=burning), advance=driver.interval())
    status = driver.status
    assert status.phase.value == "RolledBack" and status.bake is not None and status.bake.result == "Reverted"
    breach = next(c for c in status.bake.checks if c.sli == BURN)
    assert (
        not breach.passed and breach.value == pytest.approx(10) and breach.canaryValue == pytest.approx(0.01)
    )


def analysis_body(error_rate: dict[str, Any]) -> dict[str, Any]:
    body = digits_body()
    body["spec"]["rollout"]["analysis"] = {"errorRate": error_rate}
    return body


@pytest.mark.parametrize(
    ("burn", "field", "says"),
    [
        ({"budget": 0, "maxBurn": 4}, "budget", "must be > 0"),
        ({"budget": 1, "maxBurn": 4}, "budget", "must be < 1"),
        ({"budget": 0.001, "maxBurn": 0}, "maxBurn", "must be > 0"),
        ({"budget": 0.001, "maxBurn": -2}, "maxBurn", "must be > 0"),
        ({"budget": 0.001, "maxBurn": 5000}, "maxBurn", "must be <= 1000"),
        ({"budget": 0.5, "maxBurn": 2}, "maxBurn", "could never fail"),
        ({"budget": 0.001}, "maxBurn", "required field is missing"),
    ],
)
def test_bad_burn_rates_are_refused_with_their_field(burn: dict[str, Any], field: str, says: str) -> None:
    body = analysis_body({"max": 0.01, "burnRate": burn})
    _, errors = validate_object(body)
    path = f"spec.rollout.analysis.errorRate.burnRate.{field}"
    assert any(e.path == path and says in e.message for e in errors), errors
    # the API server names a missing property at its parent
    found = violations(body)
    assert any(v.path.startswith(path) or (path.startswith(v.path) and field in v.message) for v in found), (
        found
    )


def test_the_burn_gate_keeps_a_spec_with_error_rate_max_one_gated() -> None:
    """errorRate.max 1 can never fail; with a burn gate the error rate is still judged."""
    body = analysis_body({"max": 1, "burnRate": {"budget": 0.001, "maxBurn": 4}})
    model, errors = validate_object(body)
    assert errors == [] and violations(body) == []
    assert model is not None and model.spec.rollout.analysis.errorRate.burnRate is not None
    refused = analysis_body({"max": 1})
    assert any(e.path == "spec.rollout.analysis.errorRate.max" for e in validate_object(refused)[1])

"""The relative-latency scenario's verdict judges the outcome on real readings (pure, on synthetic status).

A no-data reading of the same-speed variant ("canary has 16 requests, need 20") is neither a false
rollback nor a pass: it is ignored; a real failed reading, or no real reading at all, is a problem.
"""

from __future__ import annotations

from typing import Any

import pytest

from kondense.localcluster.scenarios import drift_problems, relative_latency_problems


def check(variant: str, sli: str, value: float | None, passed: bool, **extra: Any) -> dict[str, Any]:
    return {"variant": variant, "sli": sli, "value": value, "passed": passed, "threshold": 1.2, **extra}


SLOW_BREACH = [
    check("int8", "p99LatencyMs", 150.0, True, threshold=500),
    check("int8", "p99LatencyRatio", 1.33, False, pValue=1e-40, alpha=0.05),
]
SAME_SPEED_PASS = check("fp16", "p99LatencyRatio", 1.0, True, pValue=0.3, alpha=0.05)
NO_DATA = check(
    "fp16", "p99LatencyRatio", None, False, message="canary has 16 requests, need 20 in 10s (no data)"
)
REAL_FAIL = check("fp16", "p99LatencyRatio", 1.33, False, pValue=0.001, alpha=0.05)


def status(*checks: dict[str, Any], phase: str = "Promoted", promoted: str | None = "fp16") -> dict[str, Any]:
    return {
        "phase": phase,
        "stable": {"variant": promoted},
        "variants": [
            {"name": "int8", "phase": "RolledBack"},
            {"name": "fp16", "phase": "Promoted" if phase == "Promoted" else "Succeeded"},
        ],
        "canary": {"checks": list(checks)},
    }


@pytest.mark.parametrize(
    ("name", "body", "problem"),
    [
        ("real pass", status(*SLOW_BREACH, SAME_SPEED_PASS), None),
        (
            "a no-data reading beside a real pass is ignored",
            status(*SLOW_BREACH, NO_DATA, SAME_SPEED_PASS),
            None,
        ),
        (
            "only no-data readings: the claim is not shown",
            status(*SLOW_BREACH, NO_DATA),
            "never had its p99 ratio read",
        ),
        (
            "a real failed reading is a false failure",
            status(*SLOW_BREACH, REAL_FAIL, SAME_SPEED_PASS),
            "real readings",
        ),
        (
            "an absolute check failing on a real reading counts too",
            status(*SLOW_BREACH, SAME_SPEED_PASS, check("fp16", "p99LatencyMs", 600.0, False, threshold=500)),
            "real readings",
        ),
        (
            "not promoted",
            status(*SLOW_BREACH, SAME_SPEED_PASS, phase="RolledBack", promoted=None),
            "not promoted",
        ),
        (
            "the slow one not significantly worse",
            status(check("int8", "p99LatencyRatio", 1.33, False, pValue=0.2, alpha=0.05), SAME_SPEED_PASS),
            "no significant p99LatencyRatio breach",
        ),
    ],
)
def test_relative_latency_verdict(name: str, body: dict[str, Any], problem: str | None) -> None:
    problems = relative_latency_problems(body)
    if problem is None:
        assert problems == [], name
    else:
        assert any(problem in p for p in problems), (name, problems)


DRIFT_BREACH = check("int8", "confidencePSI", 13.9, False, threshold=0.25, pValue=1e-50, alpha=0.05)


def agrees(value: float) -> dict[str, Any]:
    return check("int8", "accuracyDelta", value, value <= 0.02, threshold=0.02)


@pytest.mark.parametrize(
    ("name", "readings", "problem"),
    [
        ("agreed in every window", [agrees(0.0), agrees(0.0), agrees(0.011)], None),
        (
            "one short window over the threshold by chance (CI: 0.026 over 4 s), agreed overall",
            [agrees(0.0), agrees(0.0), agrees(0.026), agrees(0.011)],
            None,
        ),
        ("disagreed overall", [agrees(0.03), agrees(0.05), agrees(0.0)], "did not agree with stable"),
        ("never read", [], "did not agree with stable"),
    ],
)
def test_drift_verdict(name: str, readings: list[dict[str, Any]], problem: str | None) -> None:
    problems = drift_problems(status(DRIFT_BREACH, *readings))
    if problem is None:
        assert problems == [], name
    else:
        assert any(problem in p for p in problems), (name, problems)

"""Relative gates (issue 13): the canary judged against stable over the same window. A relative
breach needs both the ratio/increase past the gate and p < alpha; synthetic histograms with known
answers, table-driven."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import yaml

from kondense.api.resource import AnalysisSpec, CompressedModelSpec
from kondense.api.validation import validate_object
from kondense.operator.analysis import SLI, Comparison, Reading, TrackSample, Verdict, analyse
from kondense.serving.metrics import LATENCY_BUCKETS

NOW = "2026-01-01T00:00:00Z"
BOUNDS = [*LATENCY_BUCKETS, math.inf]  # the server's own buckets (seconds)


def histogram(samples: np.ndarray) -> list[tuple[float, float]]:
    """Cumulative buckets like ``sum by (le) (increase(..._bucket[w]))``."""
    return [(le, float(np.sum(samples <= le))) for le in BOUNDS]


def side(samples: np.ndarray, errors: float = 0) -> TrackSample:
    return TrackSample(requests=float(len(samples)), errors=errors, latency=histogram(samples))


def lognormal(seed: int, median_s: float, n: int) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(math.log(median_s), 0.4, n)


SPEC = AnalysisSpec(
    window="30s",
    minRequests=20,
    p99LatencyMs={"max": 50, "maxRatioToStable": 1.2},
    errorRate={"max": 0.05, "maxIncreaseOverStable": 0.005},
)


def readings(requests: float = 1000, p99: float = 10, err: float = 0.0) -> list[Reading]:
    return [
        Reading(SLI.REQUESTS, requests),
        Reading(SLI.P99_LATENCY_MS, p99),
        Reading(SLI.ERROR_RATE, err),
    ]


def by_sli(comparison: Comparison | None, spec: AnalysisSpec = SPEC):
    analysis = analyse(spec, readings(), NOW, "30s", comparison)
    return analysis, {c.sli: c for c in analysis.checks}


def test_a_real_slowdown_under_the_absolute_limit_is_a_relative_breach() -> None:
    stable = lognormal(1, 0.004, 2000)
    canary = lognormal(2, 0.004 * 1.3, 2000)  # 1.3x slower, p99 ~10 ms: far under max 50 ms
    analysis, checks = by_sli(Comparison(side(canary), side(stable)))
    ratio = checks["p99LatencyRatio"]
    assert analysis.verdict is Verdict.FAIL
    assert checks["p99LatencyMs"].passed  # the absolute gate alone would promote it
    assert not ratio.passed
    assert ratio.value == pytest.approx(1.3, abs=0.12)
    assert ratio.threshold == 1.2
    assert ratio.test == "mann-whitney-u" and ratio.pValue is not None and ratio.pValue < 1e-6
    assert ratio.canaryValue is not None and ratio.stableValue is not None
    assert ratio.canaryValue / ratio.stableValue == pytest.approx(ratio.value, rel=1e-3)
    assert (ratio.canarySamples, ratio.stableSamples, ratio.alpha) == (2000, 2000, 0.05)
    assert "significantly worse than stable" in (ratio.message or "")


def test_same_speed_canaries_are_not_rolled_back_by_noise() -> None:
    failures = []
    for seed in range(40):
        stable = lognormal(100 + seed, 0.004, 400)
        canary = lognormal(200 + seed, 0.004, 400)
        analysis, _ = by_sli(Comparison(side(canary), side(stable)))
        if analysis.verdict is not Verdict.PASS:
            failures.append(seed)
    assert failures == []


# (canary bins, stable bins) as {bucket upper bound (s): count}; expected: passed, p below alpha
CASES = {
    # one slow canary request moves p99 into a 10x higher bucket: the ratio is past the gate, but one
    # request out of 25 is no evidence: not significant, passed
    "ratio-past-gate-but-noise": ({0.005: 24, 0.05: 1}, {0.005: 24, 0.01: 1}, True, False),
    # a 1.05x slowdown over many requests is significant but under the 1.2 gate: passed
    "significant-but-small": ({0.005: 4000, 0.0075: 1000}, {0.005: 4200, 0.0075: 800}, True, True),
    # every canary request one bucket slower: past the gate and significant
    "whole-distribution-slower": ({0.0075: 300, 0.01: 10}, {0.005: 300, 0.0075: 10}, False, True),
    # a faster canary never breaches a one-sided test
    "faster": ({0.002: 300, 0.003: 10}, {0.005: 300, 0.0075: 10}, True, False),
}


def binned(counts: dict[float, int]) -> list[tuple[float, float]]:
    total, out = 0.0, []
    for le in BOUNDS:
        total += counts.get(le, 0)
        out.append((le, total))
    return out


@pytest.mark.parametrize(("canary", "stable", "passed", "significant"), CASES.values(), ids=CASES.keys())
def test_latency_gate_needs_both_the_ratio_and_significance(
    canary: dict[float, int], stable: dict[float, int], passed: bool, significant: bool
) -> None:
    c, s = binned(canary), binned(stable)
    comparison = Comparison(
        TrackSample(float(sum(canary.values())), 0, c), TrackSample(float(sum(stable.values())), 0, s)
    )
    _, checks = by_sli(comparison)
    check = checks["p99LatencyRatio"]
    assert check.passed is passed, check.message
    assert check.pValue is not None and (check.pValue < 0.05) is significant, check.pValue


# (canary errors, canary total, stable errors, stable total): passed, p below alpha
ERROR_CASES = {
    "significant-increase": (30, 1000, 5, 1000, False, True),
    "increase-but-noise": (2, 100, 0, 100, True, False),  # z = 1.42, p = 0.078
    "equal-rates": (10, 1000, 10, 1000, True, False),
    "significant-but-under-gate": (1300, 100_000, 1000, 100_000, True, True),  # +0.003 < 0.005
    "canary-better": (0, 1000, 40, 1000, True, False),
}


@pytest.mark.parametrize(
    ("ce", "ct", "se", "st", "passed", "significant"), ERROR_CASES.values(), ids=ERROR_CASES.keys()
)
def test_error_gate_needs_both_the_increase_and_significance(
    ce: float, ct: float, se: float, st: float, passed: bool, significant: bool
) -> None:
    latency = binned({0.005: int(max(ct, st))})
    comparison = Comparison(TrackSample(ct, ce, latency), TrackSample(st, se, latency))
    _, checks = by_sli(comparison)
    check = checks["errorRateIncrease"]
    assert check.passed is passed, check.message
    assert check.test == "two-proportion-z"
    assert check.pValue is not None and (check.pValue < 0.05) is significant, check.pValue
    assert check.value == pytest.approx(ce / ct - se / st, abs=1e-6)
    assert (check.canaryValue, check.stableValue) == (pytest.approx(ce / ct), pytest.approx(se / st))


def test_increase_but_noise_has_the_textbook_p_value() -> None:
    comparison = Comparison(
        TrackSample(100, 2, binned({0.005: 100})), TrackSample(100, 0, binned({0.005: 100}))
    )
    _, checks = by_sli(comparison)
    pooled = 0.01
    z = 0.02 / math.sqrt(pooled * (1 - pooled) * (2 / 100))
    assert checks["errorRateIncrease"].pValue == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    assert "not significant (noise)" in (checks["errorRateIncrease"].message or "")


GOOD = binned({0.005: 500})
NO_DATA_CASES = {
    "stable-not-measured": (None, "stable was not measured"),
    "stable-too-few": (
        Comparison(TrackSample(500, 0, GOOD), TrackSample(10, 0, binned({0.005: 10}))),
        "stable has 10 requests, need 50",
    ),
    "canary-too-few": (
        Comparison(TrackSample(30, 0, binned({0.005: 30})), TrackSample(500, 0, GOOD)),
        "canary has 30 requests, need 50",
    ),
    "stable-unreachable": (
        Comparison(TrackSample(500, 0, GOOD), TrackSample(message="Prometheus down")),
        "stable: Prometheus down",
    ),
    "negative-count": (
        Comparison(TrackSample(500, 0, GOOD), TrackSample(-3, 0, GOOD)),
        "stable request count invalid: reading -3 is negative",
    ),
    "nan-count": (
        Comparison(TrackSample(math.nan, 0, GOOD), TrackSample(500, 0, GOOD)),
        "canary request count invalid: reading is NaN",
    ),
}


@pytest.mark.parametrize(("comparison", "why"), NO_DATA_CASES.values(), ids=NO_DATA_CASES.keys())
def test_too_few_or_unreadable_samples_are_no_data(comparison: Comparison | None, why: str) -> None:
    spec = SPEC.model_copy(update={"minSamplesPerSide": 50})
    analysis, checks = by_sli(comparison, spec)
    assert analysis.verdict is Verdict.NO_DATA
    for sli in ("p99LatencyRatio", "errorRateIncrease"):
        assert checks[sli].value is None and not checks[sli].passed
        assert why in (checks[sli].message or ""), checks[sli].message


def test_missing_histogram_or_error_count_is_no_data_for_that_gate_only() -> None:
    comparison = Comparison(TrackSample(500, None, GOOD), TrackSample(500, 0, None, "latency: no samples"))
    analysis, checks = by_sli(comparison)
    assert analysis.verdict is Verdict.NO_DATA
    assert "stable latency histogram: latency: no samples" in (checks["p99LatencyRatio"].message or "")
    assert "canary error count invalid: no error count" in (checks["errorRateIncrease"].message or "")
    # more errors than requests is not a count anyone can trust
    _, checks = by_sli(Comparison(TrackSample(500, 600, GOOD), TrackSample(500, 0, GOOD)))
    assert checks["errorRateIncrease"].value is None


def test_mismatched_buckets_are_no_data() -> None:
    other = [(0.01, 500.0), (math.inf, 500.0)]
    _, checks = by_sli(Comparison(TrackSample(500, 0, GOOD), TrackSample(500, 0, other)))
    assert "different buckets" in (checks["p99LatencyRatio"].message or "")
    assert checks["p99LatencyRatio"].value is None


def test_stable_idle_at_100_percent_only_the_absolute_gates_judge() -> None:
    slow = Comparison(side(lognormal(3, 0.006, 500)), TrackSample(0, 0, None), stable_idle=True)
    analysis, checks = by_sli(slow)
    assert analysis.verdict is Verdict.PASS
    assert set(checks) == {"p99LatencyMs", "errorRate"}


def test_no_relative_gate_no_relative_check() -> None:
    spec = AnalysisSpec(p99LatencyMs={"max": 50})
    analysis = analyse(spec, readings(), NOW, "30s", None)
    assert [c.sli for c in analysis.checks] == ["p99LatencyMs", "errorRate"]
    assert analysis.verdict is Verdict.PASS
    assert not spec.relative_gates()
    assert SPEC.relative_gates() and SPEC.samples_per_side() == 20


def test_alpha_is_the_level_in_force() -> None:
    # p = 0.078: past the gate and significant at alpha 0.1, not at 0.05
    comparison = Comparison(
        TrackSample(100, 2, binned({0.005: 100})), TrackSample(100, 0, binned({0.005: 100}))
    )
    spec = SPEC.model_copy(update={"alpha": 0.1})
    analysis, checks = by_sli(comparison, spec)
    assert analysis.verdict is Verdict.FAIL
    assert checks["errorRateIncrease"].alpha == 0.1


# ------------------------------------------------------------------------------------------------
# the spec: new fields, their rules, and the errors users see

BASE: dict[str, Any] = {
    "apiVersion": "kondense.dev/v1alpha1",
    "kind": "CompressedModel",
    "metadata": {"name": "m"},
    "spec": {
        "baseModel": {"uri": "file:///m/model.onnx"},
        "data": {"evaluation": {"uri": "file:///m/eval.npz"}},
        "targets": [{"name": "a", "technique": "dynamic-int8"}],
    },
}

SPEC_CASES = {
    "ratio-one": (
        {"p99LatencyMs": {"max": 50, "maxRatioToStable": 1.0}},
        None,
        "p99LatencyMs.maxRatioToStable",
    ),
    "increase-zero": ({"errorRate": {"maxIncreaseOverStable": 0}}, None, "errorRate.maxIncreaseOverStable"),
    "alpha-too-high": ({"alpha": 0.6}, None, "alpha"),
    "min-samples-zero": ({"minSamplesPerSide": 0}, None, "minSamplesPerSide"),
    "triton-ratio": (
        {"p99LatencyMs": {"max": 50, "maxRatioToStable": 1.2}},
        "triton",
        "p99LatencyMs.maxRatioToStable",
    ),
}


@pytest.mark.parametrize(("analysis", "runtime", "field"), SPEC_CASES.values(), ids=SPEC_CASES.keys())
def test_bad_relative_gate_settings_are_refused_with_their_field(
    analysis: dict, runtime: str | None, field: str
) -> None:
    body = yaml.safe_load(yaml.safe_dump(BASE))
    body["spec"]["rollout"] = {"analysis": analysis}
    if runtime:
        body["spec"]["serving"] = {"runtime": runtime}
    _, errors = validate_object(body)
    assert any(e.path.startswith(f"spec.rollout.analysis.{field}") for e in errors), errors


def test_error_rate_relative_gate_alone_keeps_the_default_absolute_gate() -> None:
    spec = CompressedModelSpec.model_validate(
        {**BASE["spec"], "rollout": {"analysis": {"errorRate": {"maxIncreaseOverStable": 0.005}}}}
    )
    gate = spec.rollout.analysis.errorRate
    assert (gate.max, gate.maxIncreaseOverStable) == (0.01, 0.005)
    # triton may use the error comparison (counts), not the latency one
    triton: dict[str, Any] = {**BASE["spec"], "serving": {"runtime": "triton"}}
    triton["rollout"] = {"analysis": {"errorRate": {"max": 0.01, "maxIncreaseOverStable": 0.01}}}
    assert CompressedModelSpec.model_validate(triton).rollout.analysis.relative_gates()

"""Turn SLI readings into checks and a verdict (pure). No data is never a pass.

Readings come from outside (Prometheus), so each one is judged before it is compared: NaN and
negative numbers are invalid (no data, with the reason), a count of +Inf requests is invalid, and a
+Inf reading of a gated SLI (e.g. a p99 beyond the highest histogram bucket) is a breach.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from kondense.api.resource import AnalysisSpec, Check
from kondense.operator.statistics import (
    Buckets,
    StatisticsError,
    TestResult,
    bin_counts,
    histogram_quantile,
    ks_test,
    mann_whitney_greater,
    population_stability_index,
    two_proportion_greater,
)


class SLI(StrEnum):
    REQUESTS = "requests"  # canary requests in the window; below minRequests is no data
    P99_LATENCY_MS = "p99LatencyMs"
    ERROR_RATE = "errorRate"
    # error-budget burn: the error rate over the window divided by the SLO's budget (never queried)
    ERROR_BUDGET_BURN = "errorBudgetBurn"
    ACCURACY_DELTA = "accuracyDelta"
    # relative gates: judged from a Comparison of both tracks, never queried as a scalar
    P99_LATENCY_RATIO = "p99LatencyRatio"
    ERROR_RATE_INCREASE = "errorRateIncrease"
    # confidence drift: the canary's confidence (or output norm) distribution against stable's
    CONFIDENCE_PSI = "confidencePSI"
    CONFIDENCE_KS = "confidenceKS"


@dataclass(frozen=True)
class Reading:
    sli: SLI
    value: float | None  # None: no data (no samples, Prometheus down, too few requests)
    message: str | None = None


@dataclass(frozen=True)
class TrackSample:
    """What one track (canary or stable) served over the window, for the relative gates."""

    requests: float | None = None  # requests in the window
    errors: float | None = None  # failed requests in the window
    latency: Buckets | None = None  # latency histogram (le in seconds, cumulative counts), +Inf last
    message: str | None = None  # why a part is missing
    confidence: Buckets | None = None  # top-1 confidence / output-norm histogram, +Inf last


@dataclass(frozen=True)
class Comparison:
    """The canary and stable over the same window. ``stable_idle``: stable serves no user traffic at
    this step (the canary has 100 %): the relative gates are not judged, the absolute ones are."""

    canary: TrackSample
    stable: TrackSample
    stable_idle: bool = False


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"  # a threshold was breached
    ABORT = "abort"  # a reading past its abort threshold: roll back at once, whatever failureLimit
    NO_DATA = "nodata"


# What a check records for a +Inf reading: a number (status is JSON, which has no infinity) that is
# above every threshold, so every reader of status sees a breach; the message says +Inf.
INFINITE_READING = sys.float_info.max


@dataclass(frozen=True)
class Analysis:
    checks: list[Check]
    verdict: Verdict

    @property
    def breaches(self) -> list[Check]:
        return [c for c in self.checks if not c.passed and c.value is not None]

    @property
    def breached(self) -> bool:
        return self.verdict in (Verdict.FAIL, Verdict.ABORT)


def thresholds(spec: AnalysisSpec) -> dict[SLI, float]:
    """The gates in force: the error-rate gate always (it has a default), the others when set."""
    out: dict[SLI, float] = {}
    if spec.p99LatencyMs:
        out[SLI.P99_LATENCY_MS] = spec.p99LatencyMs.max
    out[SLI.ERROR_RATE] = spec.errorRate.max
    if spec.errorRate.burnRate is not None:
        out[SLI.ERROR_BUDGET_BURN] = spec.errorRate.burnRate.maxBurn
    if spec.accuracyDelta:
        out[SLI.ACCURACY_DELTA] = spec.accuracyDelta.max
    return out


def abort_thresholds(spec: AnalysisSpec) -> dict[SLI, float]:
    """Per configured SLI, the reading past which the canary is rolled back at once."""
    out: dict[SLI, float] = {}
    if spec.p99LatencyMs:
        out[SLI.P99_LATENCY_MS] = spec.p99LatencyMs.abort_at()
    if spec.errorRate:
        out[SLI.ERROR_RATE] = spec.errorRate.abort_at()
    if spec.accuracyDelta:
        out[SLI.ACCURACY_DELTA] = spec.accuracyDelta.abort_at()
    return out


def invalid_reason(value: float) -> str | None:
    """Why a finite-or-not reading cannot be used at all (None: usable, +Inf included)."""
    if math.isnan(value):
        return "reading is NaN (not a number)"
    if value < 0:
        return f"reading {value:g} is negative (invalid)"
    return None


def burn_reading(spec: AnalysisSpec, error_rate: Reading | None) -> Reading | None:
    """The burn rate derived from the error-rate reading (None: no burnRate gate). An unusable error
    rate makes the burn no data, with the reason; +Inf burns at +Inf (a breach)."""
    gate = spec.errorRate.burnRate
    if gate is None:
        return None
    value = error_rate.value if error_rate is not None else None
    bad = None if value is None else invalid_reason(value)
    if value is None or bad is not None:
        why = bad or (error_rate.message if error_rate is not None and error_rate.message else "no data")
        return Reading(SLI.ERROR_BUDGET_BURN, None, f"error rate: {why}")
    return Reading(SLI.ERROR_BUDGET_BURN, value / gate.budget)


def analyse(
    spec: AnalysisSpec,
    readings: Sequence[Reading],
    now: str,
    window: str | None = None,
    comparison: Comparison | None = None,
) -> Analysis:
    """One check per gate in force. Missing, empty or invalid readings fail as no-data. The relative
    gates (``relative_checks``) are judged from ``comparison`` when the spec sets any."""
    window = window or spec.window
    by_sli = {r.sli: r for r in readings}
    burn = burn_reading(spec, by_sli.get(SLI.ERROR_RATE))
    if burn is not None:
        by_sli[SLI.ERROR_BUDGET_BURN] = burn
    checks: list[Check] = []
    traffic = by_sli.get(SLI.REQUESTS)
    count = traffic.value if traffic is not None else None
    bad = None if count is None else invalid_reason(count) or ("+Inf requests" if math.isinf(count) else None)
    if count is None or bad is not None or count < spec.minRequests:
        if bad is not None:
            why = f"canary request count invalid: {bad}"
        elif traffic is not None and traffic.message:
            why = traffic.message
        else:
            why = f"{'no' if count is None else f'{count:.0f}'} canary requests"
        checks.append(
            Check(
                time=now,
                sli=SLI.REQUESTS.value,
                value=None,
                threshold=float(spec.minRequests),
                window=window,
                passed=False,
                message=f"{why}, need {spec.minRequests} in {window}: no data (counts as a failure)",
            )
        )
        return Analysis(checks, Verdict.NO_DATA)
    aborts = abort_thresholds(spec)
    severe = False
    for sli, threshold in thresholds(spec).items():
        reading = by_sli.get(sli)
        value = reading.value if reading else None
        bad = None if value is None else invalid_reason(value)
        if value is None or bad is not None:
            why = bad or (reading.message if reading and reading.message else "no data")
            checks.append(
                Check(
                    time=now,
                    sli=sli.value,
                    value=None,
                    threshold=threshold,
                    window=window,
                    passed=False,
                    message=f"{why} (no data, counts as a failure)",
                )
            )
            continue
        passed = value <= threshold
        shown = "+Inf" if math.isinf(value) else f"{value:.4g}"
        verdict_text = None if passed else f"{sli.value} {shown} > {threshold:g} over {window}"
        canary_value = None
        if sli is SLI.ERROR_BUDGET_BURN and spec.errorRate.burnRate is not None:
            rate = by_sli[SLI.ERROR_RATE].value
            assert rate is not None  # a burn reading is derived from a usable error rate
            canary_value = _finite(rate)
            budget = spec.errorRate.burnRate.budget
            what = f"error rate {rate:.4g} / budget {budget:g} = burn {shown}x"
            verdict_text = f"{what} {'<=' if passed else '>'} maxBurn {threshold:g} over {window}"
        abort_at = aborts.get(sli)
        if abort_at is not None and value > abort_at:
            severe = True
            verdict_text = f"{verdict_text}; past abortAt {abort_at:g}: severe breach, rolled back at once"
        checks.append(
            Check(
                time=now,
                sli=sli.value,
                value=_finite(value),
                threshold=threshold,
                window=window,
                passed=passed,
                message=verdict_text,
                canaryValue=canary_value,
            )
        )
    if spec.relative_gates() and not (comparison is not None and comparison.stable_idle):
        checks += relative_checks(spec, comparison, now, window)
        checks += confidence_checks(spec, comparison, now, window)
    if severe:
        verdict = Verdict.ABORT
    elif any(not c.passed and c.value is not None for c in checks):
        verdict = Verdict.FAIL
    elif any(not c.passed for c in checks):
        verdict = Verdict.NO_DATA
    else:
        verdict = Verdict.PASS
    return Analysis(checks, verdict)


# ------------------------------------------------------------------------------------------------
# relative gates: the canary against stable over the same window


def _side_problem(name: str, sample: TrackSample, need: int, window: str) -> str | None:
    """Why one side's counts cannot be judged (None: they can)."""
    n = sample.requests
    if n is None:
        return f"{name}: {sample.message or 'no request count'}"
    bad = invalid_reason(n) or ("+Inf requests" if math.isinf(n) else None)
    if bad is not None:
        return f"{name} request count invalid: {bad}"
    if n < need:
        return f"{name} has {n:.0f} requests, need {need} in {window}"
    return None


def _no_data(sli: SLI, threshold: float, now: str, window: str, why: str, spec: AnalysisSpec) -> Check:
    return Check(
        time=now,
        sli=sli.value,
        value=None,
        threshold=threshold,
        window=window,
        passed=False,
        alpha=spec.alpha,
        message=f"{why} (no data, counts as a failure)",
    )


def _finite(value: float) -> float:
    return INFINITE_READING if math.isinf(value) else round(value, 6)


def _judge(
    difference: float,
    threshold: float,
    result: TestResult,
    alpha: float,
    what: str,
) -> tuple[bool, str]:
    """A relative breach needs both: the difference past the gate and a significant test."""
    past = difference > threshold
    significant = result.p_value < alpha
    test = f"{result.test} p={result.p_value:.3g}"
    if past and significant:
        return False, f"{what} > {threshold:g} and {test} < alpha {alpha:g}: significantly worse than stable"
    if past:
        return True, f"{what} > {threshold:g} but {test} >= alpha {alpha:g}: not significant (noise), passed"
    return True, f"{what} <= {threshold:g} ({test})"


def relative_checks(spec: AnalysisSpec, comparison: Comparison | None, now: str, window: str) -> list[Check]:
    """One check per relative gate in force. Each side needs ``samples_per_side`` requests (fewer is
    no data); a breach needs the ratio/increase past the gate AND the one-sided test's p < alpha."""
    gates: list[tuple[SLI, float]] = []
    if spec.p99LatencyMs is not None and spec.p99LatencyMs.maxRatioToStable is not None:
        gates.append((SLI.P99_LATENCY_RATIO, spec.p99LatencyMs.maxRatioToStable))
    if spec.errorRate.maxIncreaseOverStable is not None:
        gates.append((SLI.ERROR_RATE_INCREASE, spec.errorRate.maxIncreaseOverStable))
    if not gates:
        return []
    need = spec.samples_per_side()
    if comparison is None:
        return [_no_data(sli, t, now, window, "stable was not measured", spec) for sli, t in gates]
    problems = [
        p
        for p in (
            _side_problem("canary", comparison.canary, need, window),
            _side_problem("stable", comparison.stable, need, window),
        )
        if p is not None
    ]
    if problems:
        return [_no_data(sli, t, now, window, "; ".join(problems), spec) for sli, t in gates]
    checks = []
    for sli, threshold in gates:
        judge = _latency_check if sli is SLI.P99_LATENCY_RATIO else _error_check
        checks.append(judge(spec, comparison, threshold, now, window))
    return checks


def _latency_check(
    spec: AnalysisSpec, comparison: Comparison, threshold: float, now: str, window: str
) -> Check:
    sli = SLI.P99_LATENCY_RATIO
    canary, stable = comparison.canary.latency, comparison.stable.latency
    if canary is None or stable is None:
        missing = comparison.canary if canary is None else comparison.stable
        side = "canary" if canary is None else "stable"
        return _no_data(
            sli, threshold, now, window, f"{side} latency histogram: {missing.message or 'none'}", spec
        )
    need = spec.samples_per_side()
    try:
        counts = [sum(bin_counts(h)[1]) for h in (canary, stable)]
        if min(counts) < need:
            raise StatisticsError(
                f"histograms hold {counts[0]:.0f} canary and {counts[1]:.0f} stable requests, need {need} each"
            )
        p99_canary = histogram_quantile(0.99, canary)
        p99_stable = histogram_quantile(0.99, stable)
        result = mann_whitney_greater(canary, stable)
    except StatisticsError as exc:
        return _no_data(sli, threshold, now, window, f"latency histograms unusable: {exc}", spec)
    assert p99_canary is not None and p99_stable is not None  # both sides hold observations
    # a stable p99 of 0 (every request in the lowest bucket): any slower canary is infinitely slower
    ratio = p99_canary / p99_stable if p99_stable > 0 else (math.inf if p99_canary > 0 else 1.0)
    canary_ms, stable_ms = 1000 * p99_canary, 1000 * p99_stable
    what = f"p99 {canary_ms:.4g} ms / stable {stable_ms:.4g} ms = {ratio:.3g}x"
    passed, message = _judge(ratio, threshold, result, spec.alpha, what)
    return Check(
        time=now,
        sli=sli.value,
        value=_finite(ratio),
        threshold=threshold,
        window=window,
        passed=passed,
        message=f"{message} over {window}",
        canaryValue=_finite(canary_ms),
        stableValue=_finite(stable_ms),
        canarySamples=counts[0],
        stableSamples=counts[1],
        test=result.test,
        pValue=result.p_value,
        alpha=spec.alpha,
    )


def _error_check(
    spec: AnalysisSpec, comparison: Comparison, threshold: float, now: str, window: str
) -> Check:
    sli = SLI.ERROR_RATE_INCREASE
    c, s = comparison.canary, comparison.stable
    assert c.requests is not None and s.requests is not None  # checked by _side_problem
    errors = []
    for side, sample, total in (("canary", c, c.requests), ("stable", s, s.requests)):
        e = sample.errors
        bad = "no error count" if e is None else invalid_reason(e)
        if e is not None and bad is None and (math.isinf(e) or e > total):
            bad = f"{e:g} errors out of {total:g} requests"
        if bad is not None:
            return _no_data(sli, threshold, now, window, f"{side} error count invalid: {bad}", spec)
        assert e is not None
        errors.append(e)
    result = two_proportion_greater(errors[0], c.requests, errors[1], s.requests)
    rate_c, rate_s = errors[0] / c.requests, errors[1] / s.requests
    increase = rate_c - rate_s
    what = f"error rate {rate_c:.4g} - stable {rate_s:.4g} = {increase:+.4g}"
    passed, message = _judge(increase, threshold, result, spec.alpha, what)
    return Check(
        time=now,
        sli=sli.value,
        value=round(increase, 6),
        threshold=threshold,
        window=window,
        passed=passed,
        message=f"{message} over {window}",
        canaryValue=round(rate_c, 6),
        stableValue=round(rate_s, 6),
        canarySamples=c.requests,
        stableSamples=s.requests,
        test=result.test,
        pValue=result.p_value,
        alpha=spec.alpha,
    )


# ------------------------------------------------------------------------------------------------
# confidence drift: the canary's output distribution against stable's over the same window


def confidence_checks(
    spec: AnalysisSpec, comparison: Comparison | None, now: str, window: str
) -> list[Check]:
    """One check per confidence-shift statistic in force (PSI, KS). Each side needs
    ``confidenceShift.minSamplesPerSide`` observations in its histogram (fewer is no data); a breach
    needs the statistic past its gate AND the two-sample KS test's p < alpha (noise does not roll back;
    on binned data that p-value is conservative)."""
    gate = spec.confidenceShift
    if gate is None:
        return []
    gates = [(sli, t) for sli, t in ((SLI.CONFIDENCE_PSI, gate.maxPSI), (SLI.CONFIDENCE_KS, gate.maxKS)) if t]
    canary = comparison.canary.confidence if comparison is not None else None
    stable = comparison.stable.confidence if comparison is not None else None
    if comparison is None or canary is None or stable is None:
        if comparison is None:
            why = "stable was not measured"
        else:
            side, sample = ("canary", comparison.canary) if canary is None else ("stable", comparison.stable)
            why = f"{side} confidence histogram: {sample.message or 'none'}"
        return [_no_data(sli, t, now, window, why, spec) for sli, t in gates]
    need = gate.minSamplesPerSide
    try:
        counts = [sum(bin_counts(h)[1]) for h in (canary, stable)]
        if min(counts) < need:
            raise StatisticsError(
                f"{counts[0]:.0f} canary and {counts[1]:.0f} stable observations, need {need} each in {window}"
            )
        psi = population_stability_index(canary, stable)
        result = ks_test(canary, stable)
        medians = [histogram_quantile(0.5, h) for h in (canary, stable)]
    except StatisticsError as exc:
        return [
            _no_data(sli, t, now, window, f"confidence histograms unusable: {exc}", spec) for sli, t in gates
        ]
    assert medians[0] is not None and medians[1] is not None  # both sides hold observations
    checks = []
    for sli, threshold in gates:
        value = psi if sli is SLI.CONFIDENCE_PSI else result.statistic
        name = "PSI" if sli is SLI.CONFIDENCE_PSI else "KS"
        what = f"confidence {name} {value:.4g} (median {medians[0]:.4g} vs stable {medians[1]:.4g})"
        past = value > threshold
        significant = result.p_value < spec.alpha
        test = f"{result.test} p={result.p_value:.3g}"
        if past and significant:
            passed, message = (
                False,
                f"{what} > {threshold:g} and {test} < alpha {spec.alpha:g}: drifted from stable",
            )
        elif past:
            passed, message = (
                True,
                f"{what} > {threshold:g} but {test} >= alpha {spec.alpha:g}: not significant, passed",
            )
        else:
            passed, message = True, f"{what} <= {threshold:g} ({test})"
        checks.append(
            Check(
                time=now,
                sli=sli.value,
                value=_finite(value),
                threshold=threshold,
                window=window,
                passed=passed,
                message=f"{message} over {window}",
                canaryValue=round(medians[0], 6),
                stableValue=round(medians[1], 6),
                canarySamples=counts[0],
                stableSamples=counts[1],
                test=result.test,
                pValue=result.p_value,
                alpha=spec.alpha,
            )
        )
    return checks

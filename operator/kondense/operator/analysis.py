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


class SLI(StrEnum):
    REQUESTS = "requests"  # canary requests in the window; below minRequests is no data
    P99_LATENCY_MS = "p99LatencyMs"
    ERROR_RATE = "errorRate"
    ACCURACY_DELTA = "accuracyDelta"


@dataclass(frozen=True)
class Reading:
    sli: SLI
    value: float | None  # None: no data (no samples, Prometheus down, too few requests)
    message: str | None = None


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


def analyse(spec: AnalysisSpec, readings: Sequence[Reading], now: str, window: str | None = None) -> Analysis:
    """One check per gate in force. Missing, empty or invalid readings fail as no-data."""
    window = window or spec.window
    by_sli = {r.sli: r for r in readings}
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
        abort_at = aborts.get(sli)
        if abort_at is not None and value > abort_at:
            severe = True
            verdict_text = f"{verdict_text}; past abortAt {abort_at:g}: severe breach, rolled back at once"
        checks.append(
            Check(
                time=now,
                sli=sli.value,
                value=INFINITE_READING if math.isinf(value) else round(value, 6),
                threshold=threshold,
                window=window,
                passed=passed,
                message=verdict_text,
            )
        )
    if severe:
        verdict = Verdict.ABORT
    elif any(not c.passed and c.value is not None for c in checks):
        verdict = Verdict.FAIL
    elif any(not c.passed for c in checks):
        verdict = Verdict.NO_DATA
    else:
        verdict = Verdict.PASS
    return Analysis(checks, verdict)

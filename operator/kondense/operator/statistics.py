"""Canary-versus-stable statistics on what Prometheus gives: histogram buckets and counters (pure).

Relative gates judge the canary against stable measured over the same window. A difference only
counts when it is both larger than the gate allows *and* unlikely to be noise:

* latency: the Mann-Whitney U test on the two latency histograms. It needs no distribution
  assumption (latencies are skewed and multi-modal), works on binned data (every bucket is a group
  of ties, handled by the tie-corrected variance) and asks the question a reliability engineer asks:
  is a canary request stochastically slower than a stable one? A bootstrap would need raw samples,
  which a Prometheus histogram no longer has.
* error rate: a one-sided two-proportion z-test (pooled), the textbook test for "is the canary's
  failure rate higher".
* confidence drift: the population stability index (PSI) and the Kolmogorov-Smirnov statistic of
  the binned confidence distributions.

Everything here is numbers in, numbers out; ``scipy`` is not needed (the operator image stays small).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Buckets = Sequence[tuple[float, float]]
"""Prometheus histogram buckets as (upper bound ``le``, cumulative count), ``+Inf`` last."""


class StatisticsError(ValueError):
    """The inputs cannot be compared (mismatched buckets, negative counts)."""


def _normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def bin_counts(buckets: Buckets) -> tuple[list[float], list[float]]:
    """Upper bounds and per-bin (not cumulative) counts; small negative steps from counter resets and
    extrapolation are clipped to 0."""
    ordered = sorted(buckets, key=lambda b: b[0])
    bounds = [le for le, _ in ordered]
    counts: list[float] = []
    previous = 0.0
    for _, cumulative in ordered:
        if math.isnan(cumulative) or cumulative < 0:
            raise StatisticsError(f"bucket count {cumulative!r} is not a non-negative number")
        counts.append(max(cumulative - previous, 0.0))
        previous = max(previous, cumulative)
    return bounds, counts


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """The quantile the way PromQL's ``histogram_quantile`` computes it (linear within a bucket; the
    ``+Inf`` bucket answers the highest finite bound). None when the histogram is empty."""
    if not 0 <= q <= 1:
        raise StatisticsError(f"quantile {q} is not in [0, 1]")
    bounds, counts = bin_counts(buckets)
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    lower = 0.0
    for le, count in zip(bounds, counts, strict=True):
        if seen + count >= rank and count > 0:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * (rank - seen) / count
        seen += count
        if not math.isinf(le):
            lower = le
    return lower


@dataclass(frozen=True)
class TestResult:
    test: str
    statistic: float
    p_value: float  # one-sided: the canary is worse than stable


def mann_whitney_greater(canary: Buckets, stable: Buckets) -> TestResult:
    """One-sided Mann-Whitney U on two histograms with the same buckets: H1 = a canary observation
    tends to be larger (slower) than a stable one. Normal approximation with tie correction and
    continuity correction (the counts behind a canary gate are in the tens at least)."""
    bounds_c, c = bin_counts(canary)
    bounds_s, s = bin_counts(stable)
    if bounds_c != bounds_s:
        raise StatisticsError("canary and stable histograms have different buckets")
    n1, n2 = sum(c), sum(s)
    if n1 <= 0 or n2 <= 0:
        raise StatisticsError("a side has no observations")
    below = 0.0
    u = 0.0
    for ci, si in zip(c, s, strict=True):
        u += ci * (below + si / 2.0)  # canary observations above stable ones, ties count half
        below += si
    n = n1 + n2
    ties = sum((ci + si) ** 3 - (ci + si) for ci, si in zip(c, s, strict=True))
    variance = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:  # every observation in one bucket: no evidence either way
        return TestResult("mann-whitney-u", u, 1.0)
    z = (u - n1 * n2 / 2.0 - 0.5) / math.sqrt(variance)
    return TestResult("mann-whitney-u", u, _normal_sf(z))


def two_proportion_greater(
    canary_errors: float, canary_total: float, stable_errors: float, stable_total: float
) -> TestResult:
    """One-sided pooled two-proportion z-test: H1 = the canary's error rate is higher."""
    for name, value in (("canary", canary_total), ("stable", stable_total)):
        if value <= 0:
            raise StatisticsError(f"{name} has no requests")
    if not (0 <= canary_errors <= canary_total and 0 <= stable_errors <= stable_total):
        raise StatisticsError("error counts must lie between 0 and the request counts")
    p1, p2 = canary_errors / canary_total, stable_errors / stable_total
    pooled = (canary_errors + stable_errors) / (canary_total + stable_total)
    se = math.sqrt(pooled * (1 - pooled) * (1 / canary_total + 1 / stable_total))
    if se == 0:
        return TestResult("two-proportion-z", 0.0, 1.0 if p1 <= p2 else 0.0)
    z = (p1 - p2) / se
    return TestResult("two-proportion-z", z, _normal_sf(z))


def _distributions(canary: Buckets, stable: Buckets) -> tuple[list[float], list[float]]:
    bounds_c, c = bin_counts(canary)
    bounds_s, s = bin_counts(stable)
    if bounds_c != bounds_s:
        raise StatisticsError("canary and stable histograms have different buckets")
    total_c, total_s = sum(c), sum(s)
    if total_c <= 0 or total_s <= 0:
        raise StatisticsError("a side has no observations")
    return [x / total_c for x in c], [x / total_s for x in s]


def population_stability_index(canary: Buckets, stable: Buckets, floor: float = 1e-4) -> float:
    """PSI = sum (p_c - p_s) ln(p_c / p_s) over the bins; empty bins get ``floor`` so one empty
    bin does not make it infinite. Common reading: < 0.1 stable, 0.1-0.25 a shift, > 0.25 a
    large shift."""
    pc, ps = _distributions(canary, stable)
    return sum(
        (max(a, floor) - max(b, floor)) * math.log(max(a, floor) / max(b, floor))
        for a, b in zip(pc, ps, strict=True)
    )


def ks_statistic(canary: Buckets, stable: Buckets) -> float:
    """Kolmogorov-Smirnov statistic of the binned distributions: the largest gap between the CDFs."""
    pc, ps = _distributions(canary, stable)
    gap = fc = fs = 0.0
    for a, b in zip(pc, ps, strict=True):
        fc += a
        fs += b
        gap = max(gap, abs(fc - fs))
    return gap


def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution: 2 sum_k (-1)^(k-1) exp(-2 k^2 lam^2)."""
    if lam <= 0.0:
        return 1.0
    if lam < 0.2:  # the series converges slowly here and its value is 1 to 1e-12
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = math.exp(-2.0 * k * k * lam * lam)
        total += term if k % 2 else -term
        if term < 1e-16:
            break
    return min(1.0, max(0.0, 2.0 * total))


def ks_test(canary: Buckets, stable: Buckets) -> TestResult:
    """Two-sided two-sample Kolmogorov-Smirnov test of two histograms with the same buckets: the
    statistic of ``ks_statistic`` and its asymptotic p-value (Stephens' small-sample correction of
    the effective size). On binned data the statistic can only be smaller than on the raw samples,
    so the p-value is conservative: binning never makes noise look like a shift."""
    gap = ks_statistic(canary, stable)
    n1 = sum(bin_counts(canary)[1])
    n2 = sum(bin_counts(stable)[1])
    effective = math.sqrt(n1 * n2 / (n1 + n2))
    return TestResult("kolmogorov-smirnov", gap, kolmogorov_sf((effective + 0.12 + 0.11 / effective) * gap))

"""The canary-vs-stable statistics, on synthetic samples with known answers (scipy as the oracle)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from kondense.operator.statistics import (
    StatisticsError,
    histogram_quantile,
    ks_statistic,
    mann_whitney_greater,
    population_stability_index,
    two_proportion_greater,
)

# the server's latency buckets (seconds), as a Prometheus histogram exports them
BOUNDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, math.inf]


def histogram(samples: np.ndarray) -> list[tuple[float, float]]:
    """Cumulative buckets like ``sum by (le) (increase(..._bucket[w]))``."""
    return [(le, float(np.sum(samples <= le))) for le in BOUNDS]


def test_histogram_quantile_matches_promql() -> None:
    buckets = [(0.1, 10.0), (0.5, 60.0), (1.0, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.42)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.5 + 0.5 * (99 - 60) / 40)
    assert histogram_quantile(0.99, [(0.1, 0.0), (math.inf, 5.0)]) == 0.1  # +Inf: the highest bound
    assert histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None


def test_mann_whitney_on_binned_ties_equals_scipy_on_the_values() -> None:
    rng = np.random.default_rng(7)
    values = np.array(BOUNDS[:-1])
    canary = rng.choice(values[2:9], size=180)
    stable = rng.choice(values[1:8], size=240)
    ours = mann_whitney_greater(histogram(canary), histogram(stable))
    oracle = stats.mannwhitneyu(
        canary, stable, alternative="greater", method="asymptotic", use_continuity=True
    )
    assert ours.statistic == pytest.approx(oracle.statistic)
    assert ours.p_value == pytest.approx(oracle.pvalue, rel=1e-9)


def test_noise_does_not_breach_and_a_real_slowdown_does() -> None:
    rng = np.random.default_rng(11)
    same, slower = 0, 0
    trials = 200
    for _ in range(trials):
        stable = rng.lognormal(math.log(0.004), 0.5, 300)
        canary_same = rng.lognormal(math.log(0.004), 0.5, 300)
        canary_slow = rng.lognormal(math.log(0.004 * 1.3), 0.5, 300)
        same += mann_whitney_greater(histogram(canary_same), histogram(stable)).p_value < 0.05
        slower += mann_whitney_greater(histogram(canary_slow), histogram(stable)).p_value < 0.05
    assert same / trials <= 0.10  # about the 5 % the level promises (binning makes it conservative)
    assert slower / trials >= 0.90  # a 1.3x slowdown is seen almost always with 300 requests a side


def test_two_proportion_known_answer() -> None:
    result = two_proportion_greater(30, 1000, 10, 1000)
    assert result.statistic == pytest.approx(3.1944, abs=1e-4)
    assert result.p_value == pytest.approx(stats.norm.sf(result.statistic))
    assert two_proportion_greater(10, 1000, 30, 1000).p_value > 0.99
    assert two_proportion_greater(0, 100, 0, 100).p_value == 1.0
    with pytest.raises(StatisticsError):
        two_proportion_greater(5, 0, 1, 10)


def test_psi_and_ks_known_answers() -> None:
    a = [(0.5, 50.0), (1.0, 100.0)]
    b = [(0.5, 25.0), (1.0, 100.0)]
    assert population_stability_index(a, a) == 0.0
    assert population_stability_index(a, b) == pytest.approx(0.25 * math.log(2) - 0.25 * math.log(2 / 3))
    assert ks_statistic(a, b) == pytest.approx(0.25)
    with pytest.raises(StatisticsError, match="different buckets"):
        ks_statistic(a, [(0.4, 1.0), (1.0, 2.0)])


def test_bad_counts_are_refused() -> None:
    with pytest.raises(StatisticsError):
        histogram_quantile(0.5, [(0.1, float("nan")), (math.inf, 1.0)])
    with pytest.raises(StatisticsError):
        mann_whitney_greater([(1.0, 0.0), (math.inf, 0.0)], [(1.0, 3.0), (math.inf, 3.0)])

"""Confidence drift (issue 13): the canary's top-1 confidence (or output norm) distribution against
stable's over the same window. A breach needs the PSI/KS statistic past its gate AND the two-sample KS
test's p < alpha; too few observations on a side is no data, never a pass. Synthetic samples with
known answers (scipy as the oracle), table-driven."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import yaml
from scipy import special, stats

from kondense.api.resource import AnalysisSpec
from kondense.api.validation import validate_object
from kondense.operator.analysis import SLI, Comparison, Reading, TrackSample, Verdict, analyse
from kondense.operator.statistics import (
    StatisticsError,
    kolmogorov_sf,
    ks_statistic,
    ks_test,
    population_stability_index,
)
from kondense.serving.metrics import CONFIDENCE_BUCKETS

NOW = "2026-01-01T00:00:00Z"
BOUNDS = [*CONFIDENCE_BUCKETS, math.inf]  # the server's own buckets


def histogram(samples: np.ndarray) -> list[tuple[float, float]]:
    """Cumulative buckets like ``sum by (le) (increase(kondense_output_confidence_bucket[w]))``."""
    return [(le, float(np.sum(samples <= le))) for le in BOUNDS]


def confidences(seed: int, n: int, scale: float = 1.0, classes: int = 10) -> np.ndarray:
    """Top-1 softmax confidence of synthetic logits (a confident classifier), the logits times ``scale``:
    the argmax is the same whatever the scale, the confidence is not."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, (n, classes))
    logits[np.arange(n), rng.integers(0, classes, n)] += rng.normal(6.0, 1.5, n)
    logits *= scale
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).max(axis=1)


def side(samples: np.ndarray | None, requests: float = 1000) -> TrackSample:
    return TrackSample(
        requests=requests, errors=0, confidence=None if samples is None else histogram(samples),
        message=None if samples is not None else "confidence: no samples",
    )  # fmt: skip


READINGS = [Reading(SLI.REQUESTS, 1000.0), Reading(SLI.ERROR_RATE, 0.0)]


def spec(**shift: Any) -> AnalysisSpec:
    return AnalysisSpec(window="30s", minRequests=20, confidenceShift=shift or {"maxPSI": 0.25})


def checks_of(analysis_spec: AnalysisSpec, comparison: Comparison | None):
    analysis = analyse(analysis_spec, READINGS, NOW, "30s", comparison)
    return analysis, {c.sli: c for c in analysis.checks}


# ---- the statistics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.2, 0.5, 0.8, 1.0, 1.36, 1.63, 2.0, 3.0])
def test_kolmogorov_survival_equals_scipy(lam: float) -> None:
    assert kolmogorov_sf(lam) == pytest.approx(special.kolmogorov(lam), abs=1e-9)


def test_kolmogorov_survival_bounds() -> None:
    assert kolmogorov_sf(0.0) == 1.0
    assert kolmogorov_sf(0.1) == 1.0
    assert 0.0 <= kolmogorov_sf(10.0) < 1e-80


def test_ks_on_binned_values_equals_scipy_on_the_same_values() -> None:
    """Values that sit on bucket bounds lose nothing to binning: the statistic is scipy's exactly and
    the p-value is the asymptotic one with Stephens' correction."""
    rng = np.random.default_rng(3)
    grid = np.array(CONFIDENCE_BUCKETS[4:19])
    canary = rng.choice(grid[:12], size=300)
    stable = rng.choice(grid[3:], size=400)
    ours = ks_test(histogram(canary), histogram(stable))
    oracle = stats.ks_2samp(canary, stable, method="asymp")
    assert ours.statistic == pytest.approx(oracle.statistic, abs=1e-12)
    en = math.sqrt(300 * 400 / 700)
    assert ours.p_value == pytest.approx(special.kolmogorov((en + 0.12 + 0.11 / en) * oracle.statistic))
    assert ours.test == "kolmogorov-smirnov"


def test_psi_known_answer_and_symmetry() -> None:
    a = [(0.5, 50.0), (1.0, 100.0), (math.inf, 100.0)]  # 50 / 50 / 0
    b = [(0.5, 20.0), (1.0, 100.0), (math.inf, 100.0)]  # 20 / 80 / 0
    expected = (0.5 - 0.2) * math.log(0.5 / 0.2) + (0.5 - 0.8) * math.log(0.5 / 0.8)
    assert population_stability_index(a, b) == pytest.approx(expected)
    assert population_stability_index(b, a) == pytest.approx(expected)
    assert ks_statistic(a, b) == pytest.approx(0.3)


def test_a_side_without_observations_cannot_be_tested() -> None:
    with pytest.raises(StatisticsError):
        ks_test(histogram(np.array([])), histogram(confidences(1, 50)))


def test_noise_is_not_significant_and_a_scaled_model_is() -> None:
    """200 trials of 300 observations a side: the same model reads as a drift in about alpha of them at
    most (binning makes the KS test conservative); logits scaled by 0.5 in nearly every one."""
    same = shifted = 0
    trials = 200
    for t in range(trials):
        stable = confidences(1000 + t, 300)
        same += ks_test(histogram(confidences(5000 + t, 300)), histogram(stable)).p_value < 0.05
        shifted += ks_test(histogram(confidences(9000 + t, 300, scale=0.5)), histogram(stable)).p_value < 0.05
    assert same / trials <= 0.06
    assert shifted / trials >= 0.95


# ---- the gate ---------------------------------------------------------------------------------------

STABLE = confidences(1, 400)
SAME = confidences(2, 400)
SCALED = confidences(3, 400, scale=0.3)  # the drift scenario's kind of variant: argmax kept


@pytest.mark.parametrize(
    ("name", "gate", "canary", "stable", "verdict", "expect"),
    [
        ("same model", {"maxPSI": 0.25}, SAME, STABLE, Verdict.PASS, {SLI.CONFIDENCE_PSI: True}),
        ("scaled logits", {"maxPSI": 0.25}, SCALED, STABLE, Verdict.FAIL, {SLI.CONFIDENCE_PSI: False}),
        ("scaled, KS gate", {"maxKS": 0.2}, SCALED, STABLE, Verdict.FAIL, {SLI.CONFIDENCE_KS: False}),
        (
            "both statistics",
            {"maxPSI": 0.25, "maxKS": 0.2},
            SCALED,
            STABLE,
            Verdict.FAIL,
            {SLI.CONFIDENCE_PSI: False, SLI.CONFIDENCE_KS: False},
        ),
        ("same model, both", {"maxPSI": 0.25, "maxKS": 0.2}, SAME, STABLE, Verdict.PASS,
         {SLI.CONFIDENCE_PSI: True, SLI.CONFIDENCE_KS: True}),
        ("too few canary observations", {"maxPSI": 0.25}, SCALED[:40], STABLE, Verdict.NO_DATA,
         {SLI.CONFIDENCE_PSI: None}),
        ("too few stable observations", {"maxPSI": 0.25, "minSamplesPerSide": 500}, SCALED, STABLE,
         Verdict.NO_DATA, {SLI.CONFIDENCE_PSI: None}),
        ("no canary histogram", {"maxPSI": 0.25}, None, STABLE, Verdict.NO_DATA, {SLI.CONFIDENCE_PSI: None}),
        ("no stable histogram", {"maxKS": 0.2}, SAME, None, Verdict.NO_DATA, {SLI.CONFIDENCE_KS: None}),
    ],
)  # fmt: skip
def test_confidence_shift_gate(
    name: str,
    gate: dict[str, Any],
    canary: np.ndarray | None,
    stable: np.ndarray | None,
    verdict: Verdict,
    expect: dict[SLI, bool | None],
) -> None:
    analysis, checks = checks_of(spec(**gate), Comparison(side(canary), side(stable)))
    assert analysis.verdict is verdict, (name, analysis.checks)
    assert {c.sli for c in analysis.checks} >= {s.value for s in expect}
    for sli, passed in expect.items():
        check = checks[sli.value]
        if passed is None:  # no data: no reading, counted as a failure, with the reason
            assert check.value is None and not check.passed
            assert "no data, counts as a failure" in (check.message or "")
            continue
        assert check.passed is passed, (name, check)
        assert check.value is not None and (check.value > check.threshold) is (not passed)
        assert check.test == "kolmogorov-smirnov" and check.pValue is not None
        assert (check.canarySamples, check.stableSamples, check.alpha) == (len(canary), len(stable), 0.05)  # type: ignore[arg-type]
        assert check.canaryValue is not None and check.stableValue is not None
        if not passed:
            assert check.pValue < 0.05
            assert check.canaryValue < check.stableValue  # scaled-down logits: less confident
            assert "drifted from stable" in (check.message or "")


def test_a_shift_past_the_gate_but_not_significant_passes() -> None:
    """Tiny samples read a large PSI by chance; the KS test says it is noise: passed, and said so."""
    analysis, checks = checks_of(
        spec(maxPSI=0.05, minSamplesPerSide=10), Comparison(side(SAME[:12]), side(STABLE[:12]))
    )
    psi = checks[SLI.CONFIDENCE_PSI.value]
    assert psi.value is not None and psi.value > 0.05
    assert psi.passed and "not significant" in (psi.message or "")
    assert analysis.verdict is Verdict.PASS


def test_not_judged_without_stable_traffic_or_a_measurement() -> None:
    idle = Comparison(side(SCALED), side(STABLE), stable_idle=True)
    analysis, checks = checks_of(spec(), idle)
    assert SLI.CONFIDENCE_PSI.value not in checks and analysis.verdict is Verdict.PASS
    analysis, checks = checks_of(spec(), None)  # stable not read: no data, never a pass
    assert checks[SLI.CONFIDENCE_PSI.value].value is None and analysis.verdict is Verdict.NO_DATA


# ---- the spec ---------------------------------------------------------------------------------------

BASE = """
apiVersion: kondense.dev/v1alpha1
kind: CompressedModel
metadata: {name: m}
spec:
  baseModel: {uri: "file:///models/digits/model.onnx"}
  data: {evaluation: {uri: "file:///models/digits/eval.npz"}}
  targets: [{name: int8, technique: dynamic-int8}]
  rollout: {analysis: {confidenceShift: {maxPSI: 0.2}}}
"""


def body(**spec_changes: Any) -> dict[str, Any]:
    out = yaml.safe_load(BASE)
    for key, value in spec_changes.items():
        out["spec"][key] = value
    return out


@pytest.mark.parametrize(
    ("name", "changes", "path", "words"),
    [
        ("valid", {}, None, None),
        ("no statistic", {"rollout": {"analysis": {"confidenceShift": {"minSamplesPerSide": 200}}}},
         "spec.rollout.analysis.confidenceShift.maxPSI", "set maxPSI or maxKS"),
        ("PSI not positive", {"rollout": {"analysis": {"confidenceShift": {"maxPSI": 0}}}},
         "spec.rollout.analysis.confidenceShift.maxPSI", "must be > 0"),
        ("KS of 1", {"rollout": {"analysis": {"confidenceShift": {"maxKS": 1}}}},
         "spec.rollout.analysis.confidenceShift.maxKS", "must be < 1"),
        ("too few samples", {"rollout": {"analysis": {"confidenceShift": {"maxKS": 0.2, "minSamplesPerSide": 5}}}},
         "spec.rollout.analysis.confidenceShift.minSamplesPerSide", "must be >= 10"),
        ("triton", {"serving": {"runtime": "triton"}}, "spec.rollout.analysis.confidenceShift", "onnxruntime"),
        ("regression", {"task": "regression"}, "spec.rollout.analysis.confidenceShift", "regression"),
    ],
)  # fmt: skip
def test_confidence_shift_spec(
    name: str, changes: dict[str, Any], path: str | None, words: str | None
) -> None:
    model, errors = validate_object(body(**changes))
    if path is None:
        assert errors == [] and model is not None
        gate = model.spec.rollout.analysis.confidenceShift
        assert gate is not None and gate.maxPSI == 0.2 and gate.minSamplesPerSide == 100
        assert model.spec.rollout.analysis.relative_gates()  # the shell reads both tracks
        return
    assert any(e.path.startswith(path) and (words or "") in e.message for e in errors), (name, errors)

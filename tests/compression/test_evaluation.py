"""Accuracy deltas, latency measurement and the Pareto front (pure functions, table-driven)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kondense.api.techniques import Task
from kondense.compression.data import load_npz
from kondense.compression.evaluation import accuracy_delta, measure_latency
from kondense.compression.report import pareto_front


def test_classification_with_labels_is_top1_difference():
    base = np.eye(4)[[0, 1, 2, 3]]  # all correct
    variant = np.eye(4)[[0, 1, 2, 0]]  # one wrong
    result = accuracy_delta(Task.CLASSIFICATION, base, variant, np.array([0, 1, 2, 3]))
    assert result.delta == pytest.approx(0.25)
    assert result.details["agreement"] == pytest.approx(0.75)


def test_classification_without_labels_is_disagreement():
    base = np.eye(3)[[0, 1, 2, 2]]
    variant = np.eye(3)[[0, 1, 1, 2]]
    assert accuracy_delta(Task.CLASSIFICATION, base, variant).delta == pytest.approx(0.25)


def test_embedding_delta_is_one_minus_mean_cosine():
    base = np.array([[1.0, 0.0], [0.0, 1.0]])
    variant = np.array([[1.0, 0.0], [1.0, 1.0]])  # cosines 1 and 1/sqrt(2)
    expected = 1 - (1 + 2**-0.5) / 2
    assert accuracy_delta(Task.EMBEDDING, base, variant).delta == pytest.approx(expected)


def test_regression_delta_is_relative_mae():
    base = np.array([[2.0], [-2.0]])
    variant = np.array([[2.5], [-2.0]])
    assert accuracy_delta(Task.REGRESSION, base, variant).delta == pytest.approx(0.25 / 2)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape"):
        accuracy_delta(Task.REGRESSION, np.zeros((2, 3)), np.zeros((2, 4)))


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=30))
def test_pareto_front_points_are_not_dominated(points):
    front = pareto_front(points)
    assert front  # never empty
    for i in front:
        s, d = points[i]
        assert not any(s2 <= s and d2 <= d and (s2 < s or d2 < d) for s2, d2 in points)
    for j in set(range(len(points))) - set(front):
        s, d = points[j]
        assert any(s2 <= s and d2 <= d and (s2 < s or d2 < d) for s2, d2 in points)


def test_latency_is_measured_for_both_models(digits):
    result = measure_latency(digits.model, digits.model, load_npz(digits.eval), runs=30, warmup=5)
    assert result.samples == 30
    for value in (result.base_p50, result.variant_p50):
        assert 0 < value <= result.base_p99 * 10
    assert result.base_p50 <= result.base_p99

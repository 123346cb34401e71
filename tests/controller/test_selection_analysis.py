"""Table-driven tests of the pure selection and analysis functions."""

from __future__ import annotations

import pytest

from kondense.api.artifacts import VariantMetrics
from kondense.api.resource import AnalysisSpec, VariantPhase, VariantStatus
from kondense.operator.analysis import SLI, Reading, Verdict, analyse
from kondense.operator.routers import GatewayAPIRouter, ReplicaRouter
from kondense.operator.selection import select_variants
from kondense_testing.builders import digits_spec


def variant(
    name: str, delta: float | None, size: float, p50: float, phase: VariantPhase = VariantPhase.SUCCEEDED
):
    return VariantStatus(
        name=name, phase=phase, metrics=VariantMetrics(accuracyDelta=delta, sizeRatio=size, p50Ms=p50)
    )


VARIANTS = [
    variant("int8", 0.004, 0.26, 0.30),
    variant("dynamic-int8", 0.002, 0.27, 0.10),
    variant("fp16", 0.0, 0.50, 0.25),
    variant("slim-int8", 0.03, 0.05, 0.05),  # over the 0.01 budget
]


@pytest.mark.parametrize(
    ("prefer", "ladder"),
    [
        ("smallest", ["int8", "dynamic-int8", "fp16"]),
        ("fastest", ["dynamic-int8", "fp16", "int8"]),
        # pareto front first (dynamic-int8 dominates fp16 on size and speed, int8 is smallest)
        ("pareto", ["int8", "dynamic-int8", "fp16"]),
    ],
)
def test_selection_orders_passing_variants(prefer: str, ladder: list[str]) -> None:
    spec = digits_spec(selection={"maxAccuracyDelta": 0.01, "prefer": prefer})
    selection = select_variants(spec, VARIANTS)
    assert selection.ladder == ladder
    assert selection.verdicts["slim-int8"] == "slim-int8: accuracy delta 0.0300 > budget 0.0100"


def test_selection_uses_a_targets_own_budget_and_skips_failed_variants() -> None:
    spec = digits_spec()
    spec.targets[3].maxAccuracyDelta = 0.05  # slim-int8 may lose more
    failed = variant("fp16", None, 0.5, 0.2, VariantPhase.FAILED)
    failed.reason = "OOMKilled"
    selection = select_variants(spec, [VARIANTS[0], VARIANTS[1], failed, VARIANTS[3]])
    assert selection.ladder == ["slim-int8", "int8", "dynamic-int8"]
    assert selection.verdicts["fp16"] == "fp16: failed (OOMKilled)"


def test_selection_with_nothing_passing() -> None:
    spec = digits_spec(selection={"maxAccuracyDelta": 0.001})
    selection = select_variants(spec, [v for v in VARIANTS if v.name != "fp16"])
    assert selection.best is None
    assert selection.ladder == []


ANALYSIS = AnalysisSpec(
    window="30s",
    minRequests=20,
    p99LatencyMs={"max": 50},
    errorRate={"max": 0.01},
    accuracyDelta={"max": 0.02},
)


def readings(
    requests: float | None = 100, p99: float | None = 5, err: float | None = 0, acc: float | None = 0.0
):
    return [
        Reading(SLI.REQUESTS, requests),
        Reading(SLI.P99_LATENCY_MS, p99),
        Reading(SLI.ERROR_RATE, err),
        Reading(SLI.ACCURACY_DELTA, acc),
    ]


@pytest.mark.parametrize(
    ("values", "verdict", "failing"),
    [
        ({}, Verdict.PASS, []),
        ({"p99": 50.0}, Verdict.PASS, []),  # at the threshold passes
        ({"p99": 80.0}, Verdict.FAIL, ["p99LatencyMs"]),
        ({"err": 0.05}, Verdict.FAIL, ["errorRate"]),
        ({"err": 0.5}, Verdict.ABORT, ["errorRate"]),  # a 50 % error rate is never a wait-and-see
        ({"acc": 0.1, "p99": 90.0}, Verdict.FAIL, ["p99LatencyMs", "accuracyDelta"]),
        # past abortAt (default 10 x max): a severe breach, rolled back at once
        ({"acc": 0.3, "p99": 90.0}, Verdict.ABORT, ["p99LatencyMs", "accuracyDelta"]),
        ({"p99": 501.0}, Verdict.ABORT, ["p99LatencyMs"]),
        ({"acc": None}, Verdict.NO_DATA, ["accuracyDelta"]),  # no shadow comparisons: never a pass
        ({"requests": 5}, Verdict.NO_DATA, ["requests"]),  # too little traffic
        ({"requests": None}, Verdict.NO_DATA, ["requests"]),  # Prometheus down
        ({"p99": 80.0, "acc": None}, Verdict.FAIL, ["p99LatencyMs", "accuracyDelta"]),
    ],
)
def test_analysis_verdicts(values: dict[str, float | None], verdict: Verdict, failing: list[str]) -> None:
    result = analyse(ANALYSIS, readings(**values), "t")
    assert result.verdict is verdict
    assert [c.sli for c in result.checks if not c.passed] == failing
    for check in result.checks:
        if not check.passed and check.value is not None:
            assert check.threshold is not None and check.value > check.threshold
            assert check.window == "30s" and check.message


def test_prometheus_down_reason_is_kept() -> None:
    down = [Reading(s, None, "Prometheus at http://x unreachable: ConnectError") for s in SLI]
    result = analyse(ANALYSIS, down, "t")
    assert result.verdict is Verdict.NO_DATA
    assert "unreachable" in (result.checks[0].message or "")


@pytest.mark.parametrize(
    ("total", "weight", "split"),
    [(4, 0, (4, 0)), (4, 10, (3, 1)), (4, 25, (3, 1)), (4, 50, (2, 2)), (4, 90, (1, 3)), (4, 100, (0, 4)),
     (10, 25, (7, 3)), (1, 50, (0, 1)), (2, 10, (1, 1))],
)  # fmt: skip
def test_replica_router_split(total: int, weight: int, split: tuple[int, int]) -> None:
    assert ReplicaRouter().split(total, weight) == split


def test_gateway_router_keeps_stable_at_full_size() -> None:
    assert GatewayAPIRouter().split(4, 10) == (4, 1)
    assert GatewayAPIRouter().split(4, 100) == (4, 4)
    assert GatewayAPIRouter().split(4, 0) == (4, 0)

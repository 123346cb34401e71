"""The Prometheus provider and the onnxruntime backend's PromQL against a real Prometheus scraping
real `kondense serve` processes (stable + canary with shadow agreement)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kondense.api.resource import AnalysisSpec
from kondense.loadgen.requests import request_bodies
from kondense.loadgen.runner import run_load
from kondense.localcluster.prometheus import LocalPrometheus
from kondense.operator.analysis import SLI, Comparison, Reading, Verdict, analyse
from kondense.operator.backends import OnnxRuntimeBackend
from kondense.operator.providers import PrometheusProvider, read_slis, read_track
from kondense_testing.onnx_models import artifact_dir
from kondense_testing.servers import ServerProcess, start_server

NAMESPACE, MODEL = "ml", "digits"
LOAD: dict[str, float] = {}  # when the fixture's load began (unix seconds)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalPrometheus, dict[str, ServerProcess]]]:
    tmp = tmp_path_factory.mktemp("prom")
    stable_dir = artifact_dir(tmp / "stable", seed=0)
    other_dir = artifact_dir(tmp / "other", seed=7)  # different weights: disagrees with stable
    servers: dict[str, ServerProcess] = {}
    prometheus = LocalPrometheus(tmp / "prometheus")
    try:
        servers["stable"] = start_server(stable_dir, MODEL, "--variant", "stable")
        servers["canary"] = start_server(
            other_dir, MODEL, "--variant", "canary", "--inject-latency-ms", "60",
            "--shadow-of", servers["stable"].url, "--shadow-sample", "1.0", "--task", "classification",
        )  # fmt: skip
        prometheus.set_targets(
            [
                (f"127.0.0.1:{s.port}", {"namespace": NAMESPACE, "pod": f"{MODEL}-{track}-0"})
                for track, s in servers.items()
            ]
        )
        prometheus.start()
        prometheus.wait_for_targets(2)
        time.sleep(2.5)  # two scrapes of every counter at 0 before the load: all of it is counted
        LOAD["started"] = time.time()
        rng = np.random.default_rng(3)
        bodies = request_bodies({"x": rng.normal(size=(50, 64)).astype(np.float32)})

        async def load() -> None:
            await asyncio.gather(
                *(run_load(s.url, MODEL, bodies, rps=40, duration_s=6) for s in servers.values())
            )

        asyncio.run(load())
        time.sleep(2.5)  # a couple of scrapes after the load
        yield prometheus, servers
    finally:
        prometheus.stop()
        for server in servers.values():
            server.stop()


def test_slis_from_real_metrics(stack: tuple[LocalPrometheus, dict[str, ServerProcess]]) -> None:
    prometheus, _ = stack
    provider = PrometheusProvider(prometheus.url)
    backend = OnnxRuntimeBackend()
    canary = {r.sli: r.value for r in read_slis(provider, backend.queries(NAMESPACE, MODEL, "canary", "30s"))}
    stable = {r.sli: r.value for r in read_slis(provider, backend.queries(NAMESPACE, MODEL, "stable", "30s"))}
    nan = float("nan")  # a missing reading fails every comparison below
    assert (canary[SLI.REQUESTS] or nan) > 150
    assert (canary[SLI.P99_LATENCY_MS] or nan) >= 60  # injected delay
    assert (stable[SLI.P99_LATENCY_MS] or nan) < 60
    assert canary[SLI.ERROR_RATE] == 0.0
    # a different model disagrees with stable on many rows; stable does not shadow anything
    assert (canary[SLI.ACCURACY_DELTA] or nan) > 0.3
    assert stable[SLI.ACCURACY_DELTA] is None


def test_unknown_series_is_no_data_not_zero(stack: tuple[LocalPrometheus, dict[str, ServerProcess]]) -> None:
    prometheus, _ = stack
    provider = PrometheusProvider(prometheus.url)
    readings = read_slis(provider, OnnxRuntimeBackend().queries("other-namespace", MODEL, "canary", "30s"))
    assert all(r.value is None for r in readings)


def test_prometheus_down_is_no_data_with_the_reason(tmp_path: Path) -> None:
    provider = PrometheusProvider("http://127.0.0.1:9", timeout=0.5, attempts=2)
    readings = read_slis(provider, OnnxRuntimeBackend().queries(NAMESPACE, MODEL, "canary", "30s"))
    assert all(r.value is None for r in readings)
    assert all("unreachable" in (r.message or "") for r in readings)
    assert not provider.is_online()


def test_relative_gates_on_real_histograms(stack: tuple[LocalPrometheus, dict[str, ServerProcess]]) -> None:
    """Both tracks read with the comparison queries (vector of buckets + counts), judged by the pure
    analysis: the canary's injected 60 ms is a significant ratio breach; stable against itself is not."""
    prometheus, _ = stack
    provider = PrometheusProvider(prometheus.url)
    backend = OnnxRuntimeBackend()
    canary = read_track(provider, backend.comparison_queries(NAMESPACE, MODEL, "canary", "30s"))
    stable = read_track(provider, backend.comparison_queries(NAMESPACE, MODEL, "stable", "30s"))
    assert canary.message is None and stable.message is None
    for sample in (canary, stable):
        assert sample.latency is not None and sample.latency[-1][0] == math.inf
        # the histogram counts the same requests as the counter
        assert sample.latency[-1][1] == pytest.approx(sample.requests, rel=0.02)
        assert sample.errors == 0.0
    assert (canary.requests or 0) > 150 and (stable.requests or 0) > 150
    spec = AnalysisSpec(
        minRequests=20,
        p99LatencyMs={"max": 1000, "maxRatioToStable": 1.2},
        errorRate={"maxIncreaseOverStable": 0.005},
    )
    readings = [
        Reading(SLI.REQUESTS, canary.requests),
        Reading(SLI.P99_LATENCY_MS, 70.0),
        Reading(SLI.ERROR_RATE, 0.0),
    ]
    analysis = analyse(spec, readings, "2026-01-01T00:00:00Z", "30s", Comparison(canary, stable))
    checks = {c.sli: c for c in analysis.checks}
    assert analysis.verdict is Verdict.FAIL
    ratio = checks["p99LatencyRatio"]
    assert not ratio.passed and (ratio.value or 0) > 3 and (ratio.pValue or 1) < 1e-6
    assert (ratio.canaryValue or 0) >= 60 > (ratio.stableValue or 100)
    assert checks["errorRateIncrease"].passed and checks["errorRateIncrease"].value == 0
    same = analyse(spec, readings, "2026-01-01T00:00:00Z", "30s", Comparison(stable, stable))
    assert same.verdict is Verdict.PASS
    assert {c.sli: c.value for c in same.checks}["p99LatencyRatio"] == 1.0


def test_a_track_is_read_at_one_instant(stack: tuple[LocalPrometheus, dict[str, ServerProcess]]) -> None:
    """``at`` is the evaluation time of every part: before the load the window holds no request;
    now it holds the whole load, the counter and the histogram's +Inf bucket agreeing."""
    prometheus, _ = stack
    provider = PrometheusProvider(prometheus.url)
    queries = OnnxRuntimeBackend().comparison_queries(NAMESPACE, MODEL, "canary", "30s")
    before = read_track(provider, queries, at=LOAD["started"] - 0.2)
    assert before.requests == 0.0 and before.latency is not None and before.latency[-1][1] == 0.0
    now = read_track(provider, queries, at=time.time())
    assert (now.requests or 0) > 150 and now.latency is not None
    assert now.latency[-1][1] == pytest.approx(now.requests, rel=0.01)


def test_comparison_of_prometheus_down_is_no_data_with_the_reason() -> None:
    provider = PrometheusProvider("http://127.0.0.1:9", timeout=0.5, attempts=1)
    sample = read_track(provider, OnnxRuntimeBackend().comparison_queries(NAMESPACE, MODEL, "stable", "30s"))
    assert (sample.requests, sample.errors, sample.latency) == (None, None, None)
    assert "unreachable" in (sample.message or "")

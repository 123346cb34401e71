"""Answers from a metric endpoint are data from outside: parsed strictly, never copied into status,
and one bad answer never stops the loop. Table-driven over `parse_answer`, then through the real
HTTP client against a loopback server that answers what a hostile or broken endpoint would."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from kondense.api.resource import AnalysisSpec
from kondense.operator.analysis import SLI, Verdict, analyse
from kondense.operator.providers import (
    ComparisonQueries,
    MalformedAnswer,
    MetricUnavailable,
    PrometheusProvider,
    ProviderFactory,
    ProviderRejected,
    parse_answer,
    read_slis,
    read_track,
    url_allowed,
)
from kondense.operator.settings import OperatorSettings

SECRET = "s3cr3t-token-from-the-body"


def vector(*values: Any) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1.0, v]} for v in values]},
    }


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (vector("0.5"), 0.5),
        (vector("0.5", "2"), 2.0),  # the worst series
        (vector(), None),  # no samples
        (vector("NaN"), None),  # e.g. a quantile over no requests
        (vector("NaN", "3"), 3.0),
        (vector("+Inf"), math.inf),  # beyond the highest bucket: a breach, not no data
        (vector("1", "+Inf"), math.inf),
        (vector("2", "-1"), -1.0),  # any negative sample: the analysis refuses it
        (vector("-Inf"), -math.inf),
        ({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "7"]}}, 7.0),
    ],
)
def test_well_formed_answers(body: Any, expected: float | None) -> None:
    assert parse_answer(body) == expected


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ([1, 2, 3], "JSON list, not an object"),
        ("0.5", "JSON str"),
        ({"status": "success"}, "no data object"),
        ({"status": "success", "data": []}, "no data object"),
        ({"status": "success", "data": {"resultType": "vector"}}, "without a result list"),
        (
            {"status": "success", "data": {"resultType": "vector", "result": {"a": 1}}},
            "without a result list",
        ),
        ({"status": "success", "data": {"resultType": "vector", "result": [1]}}, "not an object"),
        ({"status": "success", "data": {"resultType": "vector", "result": [{}]}}, "not a [time"),
        (vector("fast"), "not a number"),
        (vector(0.5), "not a [time"),  # a number where Prometheus sends a string
        (vector(None), "not a [time"),
        (vector("1" * 100), "not a [time"),
        ({"status": "success", "data": {"resultType": "scalar", "result": "1"}}, "not a [time"),
        ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "'matrix' is not scalar"),
        ({"status": "success", "data": {"resultType": SECRET + "!", "result": []}}, "'unknown'"),
    ],
)
def test_malformed_answers_are_refused_with_a_reason(body: Any, says: str) -> None:
    with pytest.raises(MalformedAnswer) as info:
        parse_answer(body)
    assert says in str(info.value)
    assert SECRET not in str(info.value)


class HostileEndpoint:
    """A loopback HTTP server answering each PromQL query with a canned (status, body)."""

    def __init__(self, answers: dict[str, tuple[int, Any]]) -> None:
        answers_ = answers
        self.times: list[str] = []  # the `time` parameter of each query, in order ("" when absent)
        times_ = self.times

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                params = parse_qs(url.query)
                query = params.get("query", [""])[0]
                times_.append(params.get("time", [""])[0])
                status, body = answers_.get(query, (404, {"status": "error", "error": SECRET}))
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[HostileEndpoint]:
    server = HostileEndpoint(
        {
            "requests": (200, vector("500")),
            "p99": (200, vector("+Inf")),
            "errors": (200, [{"status": "success"}]),  # a list
            "accuracy": (200, vector("not-a-number")),
            "refused": (422, {"status": "error", "errorType": "bad_data", "error": SECRET}),
            "broken": (500, b"<html>" + SECRET.encode() + b"</html>"),
            "odd-type": (400, {"status": "error", "errorType": SECRET, "error": SECRET}),
        }
    )
    yield server
    server.close()


def test_one_unreadable_answer_is_no_data_for_that_sli_only(endpoint: HostileEndpoint) -> None:
    provider = PrometheusProvider(endpoint.url, timeout=5)
    try:
        queries = {
            SLI.REQUESTS: "requests",
            SLI.P99_LATENCY_MS: "p99",
            SLI.ERROR_RATE: "errors",
            SLI.ACCURACY_DELTA: "accuracy",
        }
        readings = {r.sli: r for r in read_slis(provider, queries)}
    finally:
        provider.close()
    assert readings[SLI.REQUESTS].value == 500
    assert readings[SLI.P99_LATENCY_MS].value == math.inf
    assert readings[SLI.ERROR_RATE].value is None
    assert "JSON list" in (readings[SLI.ERROR_RATE].message or "")
    assert readings[SLI.ACCURACY_DELTA].value is None
    assert "not a number" in (readings[SLI.ACCURACY_DELTA].message or "")
    spec = AnalysisSpec(p99LatencyMs={"max": 100}, errorRate={"max": 0.01}, accuracyDelta={"max": 0.02})
    analysis = analyse(spec, list(readings.values()), "t")
    assert analysis.verdict is Verdict.ABORT  # the +Inf p99 is a (severe) breach, whatever else is missing


def test_a_track_is_read_at_one_instant(endpoint: HostileEndpoint) -> None:
    """Every part of a track's comparison is evaluated at one ``time``: now when none is given,
    ``at`` when it is (canary and stable then share it)."""
    provider = PrometheusProvider(endpoint.url, timeout=5)
    queries = ComparisonQueries("requests", "requests", "requests", "requests")
    try:
        before = time.time()
        read_track(provider, queries)
        after = time.time()
        read_track(provider, queries, at=1767225600.25)
    finally:
        provider.close()
    now, given = endpoint.times[:4], endpoint.times[4:]
    assert len(set(now)) == 1 and before - 0.001 <= float(now[0]) <= after + 0.001  # sent as %.3f
    assert given == ["1767225600.250"] * 4


@pytest.mark.parametrize(("query", "says"), [
    ("refused", "HTTP 422 (bad_data)"),
    ("broken", "HTTP 500 without JSON"),
    ("odd-type", "HTTP 400"),
    ("missing", "HTTP 404"),
])  # fmt: skip
def test_refusals_carry_the_http_status_never_the_body(
    endpoint: HostileEndpoint, query: str, says: str
) -> None:
    provider = PrometheusProvider(endpoint.url, timeout=5)
    try:
        with pytest.raises(MetricUnavailable) as info:
            provider.query(query)
        readings = read_slis(provider, {SLI.REQUESTS: query, SLI.ERROR_RATE: "requests"})
    finally:
        provider.close()
    assert says in str(info.value) and SECRET not in str(info.value)
    assert all(r.value is None and SECRET not in (r.message or "") for r in readings)


# ---------------------------------------------------------------------------------------------
# which endpoints a CR may name (operator settings), and the bounded provider cache


OWN = "http://prometheus.monitoring:9090"


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        (OWN, True),
        ("http://prometheus.monitoring:9090/", True),
        ("HTTP://Prometheus.Monitoring:9090", True),
        ("http://prometheus.monitoring", False),  # port 80
        ("https://prometheus.monitoring:9090", False),
        ("http://prometheus.monitoring:9090/other", False),
        ("http://user:pw@prometheus.monitoring:9090", False),
        ("http://prometheus.monitoring:9090?x=1", False),
        ("http://169.254.169.254/latest/meta-data", False),
        ("http://evil.example.com", False),
        ("http://[::1", False),
    ],
)
def test_url_allow_list(url: str, allowed: bool) -> None:
    assert url_allowed(url, [OWN]) is allowed


def test_settings_default_allows_only_the_operators_own_prometheus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KONDENSE_PROMETHEUS_URL", OWN)
    assert OperatorSettings().allowed_prometheus_urls() == [OWN]
    monkeypatch.setenv("KONDENSE_PROMETHEUS_ALLOWED_URLS", "http://a:9090, http://b:9090/prom")
    assert OperatorSettings().allowed_prometheus_urls() == [OWN, "http://a:9090", "http://b:9090/prom"]
    monkeypatch.setenv("KONDENSE_PROMETHEUS_ALLOWED_URLS", "ftp://a")
    with pytest.raises(ValueError, match="not an http"):
        OperatorSettings()


def test_factory_refuses_a_foreign_url_with_the_field_path() -> None:
    factory = ProviderFactory(OperatorSettings(prometheus_url=OWN))
    foreign = AnalysisSpec(prometheus={"url": "http://evil.example.com:9090"})
    problems = factory.problems(foreign)
    assert problems and problems[0].startswith(
        "spec.rollout.analysis.prometheus.url: 'http://evil.example.com"
    )
    assert "KONDENSE_PROMETHEUS_ALLOWED_URLS" in problems[0]
    with pytest.raises(ProviderRejected):
        factory.provider(foreign)
    assert factory.cached() == []  # nothing was built for it
    assert (
        factory.problems(AnalysisSpec()) == []
        and factory.problems(AnalysisSpec(prometheus={"url": OWN})) == []
    )


class Recorder:
    def __init__(self, endpoint: str) -> None:
        self.endpoint, self.closed = endpoint, False

    def query(self, promql: str, at: float | None = None) -> float | None:
        return None

    def query_buckets(self, promql: str, at: float | None = None) -> list[tuple[float, float]] | None:
        return None

    def is_online(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


def test_cached_providers_are_bounded_and_evicted_ones_closed() -> None:
    urls = [f"http://p{i}:9090" for i in range(5)]
    settings = OperatorSettings(prometheus_url=OWN, prometheus_allowed_urls=urls, provider_cache_size=2)
    built: list[Recorder] = []

    def build(kind: str, endpoint: str) -> Recorder:
        built.append(Recorder(endpoint))
        return built[-1]

    factory = ProviderFactory(settings, build=build)
    first = factory.provider(AnalysisSpec(prometheus={"url": urls[0]}))
    assert factory.provider(AnalysisSpec(prometheus={"url": urls[0]})) is first  # cached
    for url in urls[1:]:
        factory.provider(AnalysisSpec(prometheus={"url": url}))
    assert len(factory.cached()) == 2
    assert [r.closed for r in built] == [True, True, True, False, False]
    factory.close()
    assert all(r.closed for r in built) and factory.cached() == []

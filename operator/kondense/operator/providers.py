"""Metric providers, as a registry keyed by the spec (the shape of Argo Rollouts' ProviderFactory).

The analysis spec says which provider to ask (``provider_kind``: the provider field that is set;
``prometheus`` today, also the default). ``PROVIDERS`` maps that kind to a ``ProviderBuilder``, which
checks the spec against the operator's settings (a CR may only name endpoints the operator allows)
and builds the provider. ``ProviderFactory`` builds providers through the registry and keeps a
bounded cache of them, closing the ones it evicts. A second provider is one more builder in
``PROVIDERS`` and one more optional field in ``AnalysisSpec``.

Answers come from outside: they are parsed strictly, and nothing of a response body is ever copied
into a message (status is readable by everyone who can read the CR): only the HTTP status and
Prometheus' own error type.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from kondense.api.resource import AnalysisSpec
from kondense.operator.analysis import SLI, Reading, TrackSample
from kondense.operator.settings import OperatorSettings


@dataclass(frozen=True)
class ComparisonQueries:
    """PromQL for one track's side of the relative gates (a serving backend writes them)."""

    requests: str  # scalar: requests in the window
    errors: str  # scalar: failed requests in the window (0 when none failed)
    latency_buckets: str | None  # vector grouped by le: the latency histogram; None: not exported
    confidence_buckets: str | None = None  # vector grouped by le: confidence/output-norm histogram


class MetricUnavailable(RuntimeError):
    """The provider could not answer (down, timeout, bad query): the readings are no data."""


class MalformedAnswer(MetricUnavailable):
    """One query's answer could not be read (wrong shape, non-numeric value): that SLI is no data."""


class MetricProvider(Protocol):
    def query(self, promql: str, at: float | None = None) -> float | None:
        """A scalar reading, or None when the query has no data; evaluated at ``at`` (unix seconds)
        when given, else now."""
        ...

    def query_buckets(self, promql: str, at: float | None = None) -> list[tuple[float, float]] | None:
        """A histogram's buckets (``le``, cumulative count) from a vector answer grouped by ``le``,
        ``+Inf`` last; None when the query has no data; evaluated at ``at`` when given, else now."""
        ...

    def is_online(self) -> bool: ...

    def close(self) -> None: ...


# Prometheus' documented errorType values: safe to show (anything else from the body is not shown).
_ERROR_TYPES = {"timeout", "canceled", "execution", "bad_data", "internal", "unavailable", "not_found"}


def _sample_value(pair: Any) -> float:
    """``[<unix time>, "<value>"]`` -> the value. Prometheus encodes numbers as strings, with NaN,
    +Inf and -Inf spelled out; anything else is malformed."""
    if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[1], str) or len(pair[1]) > 64:
        raise MalformedAnswer('a sample is not a [time, "value"] pair')
    try:
        return float(pair[1])
    except ValueError:
        raise MalformedAnswer("a sample value is not a number") from None


def parse_answer(body: Any) -> float | None:
    """The reading in a successful ``/api/v1/query`` answer.

    NaN samples (e.g. a quantile over no requests) are no data; any negative sample makes the
    reading that negative number (the analysis refuses it as invalid); any +Inf sample makes the
    reading +Inf (a breach); else the largest sample. No samples: None."""
    if not isinstance(body, dict):
        raise MalformedAnswer(f"the answer is a JSON {type(body).__name__}, not an object")
    if body.get("status") != "success":
        raise MalformedAnswer("the answer's status is not 'success'")
    data = body.get("data")
    if not isinstance(data, dict):
        raise MalformedAnswer("the answer has no data object")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        numbers = [_sample_value(result)]
    elif kind == "vector":
        if not isinstance(result, list):
            raise MalformedAnswer("a vector answer without a result list")
        numbers = []
        for sample in result:
            if not isinstance(sample, dict):
                raise MalformedAnswer("a vector sample is not an object")
            numbers.append(_sample_value(sample.get("value")))
    else:
        shown = kind if isinstance(kind, str) and kind.isalpha() and len(kind) <= 16 else "unknown"
        raise MalformedAnswer(f"result type {shown!r} is not scalar or vector")
    usable = [v for v in numbers if not math.isnan(v)]
    if not usable:
        return None
    negative = [v for v in usable if v < 0]
    if negative:
        return min(negative)
    return max(usable)


MAX_BUCKETS = 256  # no histogram the servers export has more; a larger answer is not one of ours


def parse_buckets(body: Any) -> list[tuple[float, float]] | None:
    """The histogram in a successful ``/api/v1/query`` answer to ``sum by (le) (...)``: one sample
    per bucket, each labelled with its upper bound ``le``. Strict: every sample needs a numeric ``le``
    (no duplicates), a finite non-negative count, and the ``+Inf`` bucket must be there. No samples:
    None. Counts that fall slightly between buckets (``increase`` extrapolation) are left to the
    statistics, which clip them."""
    _check_success(body)
    data = body["data"]
    if data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
        raise MalformedAnswer("a histogram answer must be a vector with a result list")
    result = data["result"]
    if not result:
        return None
    if len(result) > MAX_BUCKETS:
        raise MalformedAnswer(f"a histogram answer with more than {MAX_BUCKETS} buckets")
    buckets: dict[float, float] = {}
    for sample in result:
        if not isinstance(sample, dict) or not isinstance(sample.get("metric"), dict):
            raise MalformedAnswer("a histogram sample is not an object with labels")
        le = sample["metric"].get("le")
        if not isinstance(le, str) or len(le) > 32:
            raise MalformedAnswer("a histogram sample without an 'le' label")
        try:
            bound = float(le)
        except ValueError:
            raise MalformedAnswer("a histogram 'le' label is not a number") from None
        if math.isnan(bound) or bound in buckets:
            raise MalformedAnswer("histogram 'le' labels are NaN or repeated")
        count = _sample_value(sample.get("value"))
        if math.isnan(count) or math.isinf(count) or count < 0:
            raise MalformedAnswer("a histogram bucket count is not a finite non-negative number")
        buckets[bound] = count
    if math.inf not in buckets:
        raise MalformedAnswer("the histogram has no +Inf bucket")
    return sorted(buckets.items())


def _check_success(body: Any) -> None:
    if not isinstance(body, dict):
        raise MalformedAnswer(f"the answer is a JSON {type(body).__name__}, not an object")
    if body.get("status") != "success":
        raise MalformedAnswer("the answer's status is not 'success'")
    if not isinstance(body.get("data"), dict):
        raise MalformedAnswer("the answer has no data object")


class PrometheusProvider:
    """Instant queries against the Prometheus HTTP API, with timeouts and a few quick retries."""

    def __init__(self, url: str, timeout: float = 5.0, attempts: int = 3) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, timeout=timeout, follow_redirects=False)
        self._attempts = attempts

    def close(self) -> None:
        self._client.close()

    def _get(self, path: str, params: dict[str, str]) -> httpx.Response:
        @retry(
            retry=retry_if_exception_type(httpx.TransportError),
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=0.2, max=1.0),
            reraise=True,
        )
        def call() -> httpx.Response:
            return self._client.get(path, params=params)

        try:
            return call()
        except httpx.HTTPError as exc:
            raise MetricUnavailable(
                f"Prometheus at {self.url} unreachable: {exc.__class__.__name__}"
            ) from exc

    def query(self, promql: str, at: float | None = None) -> float | None:
        return parse_answer(self._answer(promql, at))

    def query_buckets(self, promql: str, at: float | None = None) -> list[tuple[float, float]] | None:
        return parse_buckets(self._answer(promql, at))

    def _answer(self, promql: str, at: float | None = None) -> Any:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        response = self._get("/api/v1/query", params)
        try:
            body = response.json()
        except ValueError:
            raise MetricUnavailable(
                f"Prometheus at {self.url} answered HTTP {response.status_code} without JSON"
            ) from None
        status = body.get("status") if isinstance(body, dict) else None
        if response.status_code != 200 or status == "error":
            error_type = body.get("errorType") if isinstance(body, dict) else None
            why = f" ({error_type})" if error_type in _ERROR_TYPES else ""
            raise MetricUnavailable(
                f"Prometheus at {self.url} refused the query: HTTP {response.status_code}{why}"
            )
        return body

    def is_online(self) -> bool:
        try:
            return self._client.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False


def read_slis(provider: MetricProvider, queries: Mapping[SLI, str]) -> list[Reading]:
    """Run every query. A provider that cannot answer makes every reading no data with the reason;
    an answer that cannot be read makes that one reading no data with the reason."""
    readings: list[Reading] = []
    for sli, promql in queries.items():
        try:
            value = provider.query(promql)
        except MalformedAnswer as exc:
            readings.append(Reading(sli, None, f"unreadable answer from the metric provider: {exc}"))
            continue
        except MetricUnavailable as exc:
            return [Reading(s, None, str(exc)) for s in queries]
        readings.append(Reading(sli, value, None if value is not None else "no samples"))
    return readings


def read_track(provider: MetricProvider, queries: ComparisonQueries, at: float | None = None) -> TrackSample:
    """One track's counts and latency histogram for the relative gates, every part evaluated at one
    instant ``at`` (unix seconds; now when None) so that they cover the same window: ``increase()``
    extrapolates to the window's end, and parts read a scrape apart could differ by a scrape
    interval's share of the window. A provider that cannot answer, or an unreadable answer, leaves
    the part missing with the reason (no data, never a pass)."""
    at = time.time() if at is None else at
    values: dict[str, Any] = {}
    reasons: list[str] = []
    parts: list[tuple[str, str | None]] = [
        ("requests", queries.requests),
        ("errors", queries.errors),
        ("latency", queries.latency_buckets),
        ("confidence", queries.confidence_buckets),
    ]
    for part, promql in parts:
        if promql is None:
            reasons.append(f"{part}: not measured by this runtime")
            continue
        try:
            histogram = part in ("latency", "confidence")
            value = provider.query_buckets(promql, at) if histogram else provider.query(promql, at)
        except MalformedAnswer as exc:
            reasons.append(f"{part}: unreadable answer from the metric provider: {exc}")
            continue
        except MetricUnavailable as exc:
            return TrackSample(message=str(exc))
        if value is None:
            reasons.append(f"{part}: no samples")
        values[part] = value
    return TrackSample(
        requests=values.get("requests"),
        errors=values.get("errors"),
        latency=values.get("latency"),
        confidence=values.get("confidence"),
        message="; ".join(reasons) or None,
    )


# ------------------------------------------------------------------------------------------------
# the registry


def normalize_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an http(s) URL, for comparing URLs written differently."""
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{url!r} is not an http(s) URL")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed.scheme, parsed.host.lower(), port, parsed.path.rstrip("/")


def url_allowed(url: str, allowed: list[str]) -> bool:
    try:
        wanted = normalize_url(url)
        parsed = httpx.URL(url)
    except (ValueError, httpx.InvalidURL):
        return False
    if parsed.userinfo or parsed.query or parsed.fragment:
        return False  # credentials, queries and fragments are never part of an allowed endpoint
    return any(_same_endpoint(wanted, entry) for entry in allowed)


def _same_endpoint(wanted: tuple[str, str, int, str], entry: str) -> bool:
    try:
        return normalize_url(entry) == wanted
    except (ValueError, httpx.InvalidURL):
        return False


class ProviderBuilder(Protocol):
    def endpoint(self, spec: AnalysisSpec, settings: OperatorSettings) -> str:
        """Where this spec's metrics come from (the cache key)."""
        ...

    def problems(self, spec: AnalysisSpec, settings: OperatorSettings) -> list[str]:
        """Why the operator will not use the endpoint the spec names ([] when it will)."""
        ...

    def build(self, endpoint: str, settings: OperatorSettings) -> MetricProvider: ...


class PrometheusBuilder:
    PATH = "spec.rollout.analysis.prometheus.url"

    def endpoint(self, spec: AnalysisSpec, settings: OperatorSettings) -> str:
        return spec.prometheus.url if spec.prometheus else settings.prometheus_url

    def problems(self, spec: AnalysisSpec, settings: OperatorSettings) -> list[str]:
        if spec.prometheus is None:
            return []
        allowed = settings.allowed_prometheus_urls()
        if url_allowed(spec.prometheus.url, allowed):
            return []
        return [
            f"{self.PATH}: {spec.prometheus.url[:200]!r} is not an allowed Prometheus URL "
            f"(the operator allows {', '.join(allowed)}; set KONDENSE_PROMETHEUS_ALLOWED_URLS to change it)"
        ]

    def build(self, endpoint: str, settings: OperatorSettings) -> MetricProvider:
        return PrometheusProvider(endpoint, timeout=settings.prometheus_timeout_seconds)


PROMETHEUS = "prometheus"
PROVIDERS: dict[str, ProviderBuilder] = {PROMETHEUS: PrometheusBuilder()}


def provider_kind(spec: AnalysisSpec) -> str:
    """Which provider the spec names: the provider field that is set (default: Prometheus)."""
    return PROMETHEUS


class ProviderRejected(ValueError):
    """The spec names a provider or endpoint the operator will not use."""


class ProviderFactory:
    """Providers for analysis specs: checked against settings, built through the registry, cached
    (at most ``settings.provider_cache_size``, least recently used evicted and closed)."""

    def __init__(
        self,
        settings: OperatorSettings,
        registry: Mapping[str, ProviderBuilder] = PROVIDERS,
        build: Callable[[str, str], MetricProvider] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self._build = build  # (kind, endpoint) -> provider; tests point it at a local Prometheus
        self._cache: OrderedDict[tuple[str, str], MetricProvider] = OrderedDict()

    def problems(self, spec: AnalysisSpec) -> list[str]:
        kind = provider_kind(spec)
        builder = self.registry.get(kind)
        if builder is None:
            return [f"spec.rollout.analysis: no metric provider {kind!r} in this operator"]
        return builder.problems(spec, self.settings)

    def provider(self, spec: AnalysisSpec) -> MetricProvider:
        problems = self.problems(spec)
        if problems:
            raise ProviderRejected("; ".join(problems))
        kind = provider_kind(spec)
        builder = self.registry[kind]
        key = (kind, builder.endpoint(spec, self.settings))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        provider = self._build(*key) if self._build else builder.build(key[1], self.settings)
        self._cache[key] = provider
        while len(self._cache) > self.settings.provider_cache_size:
            _, evicted = self._cache.popitem(last=False)
            evicted.close()
        return provider

    def cached(self) -> list[tuple[str, str]]:
        return list(self._cache)

    def close(self) -> None:
        while self._cache:
            _, provider = self._cache.popitem()
            provider.close()

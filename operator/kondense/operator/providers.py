"""Metric providers (registry, like Flagger's providers.Interface: run a query, tell if online)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

import httpx
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from kondense.operator.analysis import SLI, Reading


class MetricUnavailable(RuntimeError):
    """The provider could not answer (down, timeout, bad query): the readings are no data."""


class MetricProvider(Protocol):
    def query(self, promql: str) -> float | None:
        """A scalar reading, or None when the query has no data."""
        ...

    def is_online(self) -> bool: ...


class PrometheusProvider:
    """Instant queries against the Prometheus HTTP API, with timeouts and a few quick retries."""

    def __init__(self, url: str, timeout: float = 5.0, attempts: int = 3) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, timeout=timeout)
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
                f"Prometheus at {self.url} unreachable: {exc.__class__.__name__}: {exc}"
            ) from exc

    def query(self, promql: str) -> float | None:
        response = self._get("/api/v1/query", {"query": promql})
        try:
            body = response.json()
        except ValueError as exc:
            raise MetricUnavailable(
                f"Prometheus at {self.url} answered {response.status_code} without JSON"
            ) from exc
        if response.status_code != 200 or body.get("status") != "success":
            raise MetricUnavailable(
                f"Prometheus query failed ({response.status_code}): {body.get('error', body)}"
            )
        data = body["data"]
        if data["resultType"] == "scalar":
            values = [data["result"][1]]
        elif data["resultType"] == "vector":
            values = [sample["value"][1] for sample in data["result"]]
        else:
            raise MetricUnavailable(f"unexpected result type {data['resultType']} for {promql}")
        numbers = [float(v) for v in values]
        finite = [v for v in numbers if not math.isnan(v) and not math.isinf(v)]
        return max(finite) if finite else None

    def is_online(self) -> bool:
        try:
            return self._client.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False


def read_slis(provider: MetricProvider, queries: Mapping[SLI, str]) -> list[Reading]:
    """Run every query; a provider failure turns every reading into no data with the reason."""
    readings: list[Reading] = []
    for sli, promql in queries.items():
        try:
            value = provider.query(promql)
        except MetricUnavailable as exc:
            return [Reading(s, None, str(exc)) for s in queries]
        readings.append(Reading(sli, value, None if value is not None else "no samples"))
    return readings

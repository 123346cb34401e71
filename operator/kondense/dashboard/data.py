"""The dashboard's edge: reads CompressedModels, their Events and Jobs from a Kubernetes API and the
canary's SLIs from Prometheus (``query_range``, with the operator's own PromQL). Read-only: nothing
here writes anywhere. Every failure becomes a ``ReadError`` with one sentence to show."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import httpx

from kondense.api.resource import GROUP, KIND, PLURAL, VERSION
from kondense.dashboard.progress import MODEL_LABEL, is_compression_job
from kondense.dashboard.render import SLISeries

ApiClientFactory = Callable[[], Any]  # () -> kubernetes.client.ApiClient
MAX_POINTS = 240  # samples per series: enough for a 900 px wide plot


class ReadError(RuntimeError):
    """Something the dashboard could not read; the message is shown as a banner."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


def kubeconfig_client_factory(kubeconfig: str | None = None, context: str | None = None) -> ApiClientFactory:
    """API clients from a kubeconfig (``None``: $KUBECONFIG or ~/.kube/config), read on every call so
    a kubeconfig written later (``kondense up``) is picked up."""

    def factory() -> Any:
        import kubernetes

        try:
            return kubernetes.config.new_client_from_config(config_file=kubeconfig, context=context)
        except (kubernetes.config.ConfigException, OSError) as exc:
            raise ReadError(f"cannot load the kubeconfig {kubeconfig or '(default)'}: {exc}") from None

    return factory


def url_client_factory(url: str) -> ApiClientFactory:
    """API clients for a Kubernetes API at ``url`` without credentials (e.g. the local cluster's API)."""

    def factory() -> Any:
        import kubernetes

        configuration = kubernetes.client.Configuration()
        configuration.host = url.rstrip("/")
        return kubernetes.client.ApiClient(configuration)

    return factory


def _api_message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return f"HTTP {exc.status} {exc.reason}"


class ClusterReader:
    """One request's view of the cluster (a fresh API client per page, closed afterwards)."""

    def __init__(self, factory: ApiClientFactory) -> None:
        import kubernetes
        import urllib3

        self._k = kubernetes
        self.api = factory()
        self.host = str(getattr(self.api.configuration, "host", "the Kubernetes API"))
        self._network = (urllib3.exceptions.HTTPError, OSError)

    def close(self) -> None:
        close = getattr(self.api, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> ClusterReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, _request_timeout=10, **kwargs)
        except self._k.client.ApiException as exc:
            if exc.status == 404:
                raise ReadError(f"{what}: not found at {self.host}", not_found=True) from None
            raise ReadError(
                f"{what}: the Kubernetes API at {self.host} answered: {_api_message(exc)}"
            ) from None
        except self._network as exc:
            raise ReadError(
                f"the Kubernetes API at {self.host} is unreachable ({exc.__class__.__name__}); "
                "is the cluster running?"
            ) from None

    def _plain(self, value: Any) -> Any:
        return self.api.sanitize_for_serialization(value)

    def models(self, namespace: str | None) -> list[dict[str, Any]]:
        custom = self._k.client.CustomObjectsApi(self.api)
        if namespace:
            found = self._call(
                "compressedmodels", custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL
            )
        else:
            found = self._call("compressedmodels", custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        items = list((found or {}).get("items") or [])
        return sorted(
            items, key=lambda o: ((o.get("metadata") or {}).get("namespace") or "", o["metadata"]["name"])
        )

    def model(self, namespace: str, name: str) -> dict[str, Any]:
        custom = self._k.client.CustomObjectsApi(self.api)
        return dict(
            self._call(
                f"compressedmodel {namespace}/{name}",
                custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
            )
        )

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        core = self._k.client.CoreV1Api(self.api)
        found = self._plain(self._call("events", core.list_namespaced_event, namespace))
        return [
            e
            for e in found.get("items") or []
            if (e.get("involvedObject") or {}).get("kind") == KIND
            and (e.get("involvedObject") or {}).get("name") == name
        ]

    def jobs(self, namespace: str, name: str) -> list[dict[str, Any]]:
        batch = self._k.client.BatchV1Api(self.api)
        found = self._plain(
            self._call("jobs", batch.list_namespaced_job, namespace, label_selector=f"{MODEL_LABEL}={name}")
        )
        return [j for j in found.get("items") or [] if is_compression_job(j, name)]


# ------------------------------------------------------------------------------------------------
# Prometheus


class PrometheusReader:
    """Range queries against the Prometheus HTTP API (``/api/v1/query_range``)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[tuple[float, float]]:
        """The samples of the first series of the answer (the operator's SLI queries aggregate to
        one series); [] when there is none. Non-numeric values are left out, NaN kept as a gap."""
        params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:.3f}"}
        try:
            response = httpx.get(f"{self.url}/api/v1/query_range", params=params, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise ReadError(
                f"Prometheus at {self.url} is unreachable ({exc.__class__.__name__}): SLI series not shown"
            ) from None
        try:
            body = response.json()
        except ValueError:
            raise ReadError(
                f"Prometheus at {self.url} answered HTTP {response.status_code} without JSON: SLI series not shown"
            ) from None
        if response.status_code != 200 or not isinstance(body, dict) or body.get("status") != "success":
            error_type = body.get("errorType") if isinstance(body, dict) else None
            shown = f" ({error_type})" if isinstance(error_type, str) and error_type.isalpha() else ""
            raise ReadError(
                f"Prometheus at {self.url} refused a range query: HTTP {response.status_code}{shown}"
            )
        result = (body.get("data") or {}).get("result")
        if not isinstance(result, list) or not result or not isinstance(result[0], dict):
            return []
        points = []
        for pair in result[0].get("values") or []:
            try:
                points.append((float(pair[0]), float(pair[1])))
            except (TypeError, ValueError, IndexError):
                continue
        return points


def canary_queries(obj: Mapping[str, Any]) -> list[tuple[str, float, str]]:
    """(SLI, threshold, PromQL) per gate in force, exactly as the operator queries the canary track
    (``kondense.operator.backends``; the operator also limits them to the current variant's pods, a
    timeline shows every canary pod over time). [] when the spec does not validate."""
    from pydantic import ValidationError

    from kondense.api.resource import CompressedModelSpec
    from kondense.operator.analysis import thresholds
    from kondense.operator.backends import SERVING_BACKENDS

    meta = obj.get("metadata") or {}
    try:
        spec = CompressedModelSpec.model_validate(obj.get("spec") or {})
    except ValidationError:
        return []
    backend = SERVING_BACKENDS[spec.serving.runtime]
    analysis = spec.rollout.analysis
    queries = backend.queries(str(meta.get("namespace")), str(meta.get("name")), "canary", analysis.window)
    return [(sli.value, limit, queries[sli]) for sli, limit in thresholds(analysis).items() if sli in queries]


def sli_series(
    obj: Mapping[str, Any], prometheus: PrometheusReader, start: datetime, end: datetime
) -> list[SLISeries]:
    """Every gated SLI of the canary between ``start`` and ``end`` (raises ReadError when Prometheus
    cannot answer)."""
    t0, t1 = start.timestamp(), end.timestamp()
    step = max(1.0, (t1 - t0) / MAX_POINTS)
    out = []
    for sli, threshold, promql in canary_queries(obj):
        points = prometheus.query_range(promql, t0, t1, step)
        out.append(SLISeries(sli, threshold, [(t, v) for t, v in points if not math.isinf(t)], promql))
    return out

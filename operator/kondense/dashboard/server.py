"""The dashboard's HTTP server (standard library only): ``/`` lists the CompressedModels, ``/models/
NAMESPACE/NAME`` shows one, ``/healthz`` answers ``ok``. Every page is read from the cluster when it
is asked for; a cluster or Prometheus that cannot answer becomes a banner on the page, never a
traceback (the traceback of an unexpected error goes to the log, the page names the error).

Two ways to run it::

    serve(factory, prometheus_url, host, port)            # blocks (``kondense dashboard``)
    running = start(factory, prometheus_url, host, port)  # a background thread (``kondense up``, tests)
    running.url; running.stop()

``factory`` makes a ``kubernetes.client.ApiClient`` per page (``data.kubeconfig_client_factory`` or
``data.url_client_factory``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from kondense.dashboard import render
from kondense.dashboard.data import ApiClientFactory, ClusterReader, PrometheusReader, ReadError, sli_series
from kondense.dashboard.progress import compression_progress
from kondense.dashboard.timeline import check_points, decisions, events_of, time_range, weight_steps

log = logging.getLogger("kondense.dashboard")
DEFAULT_PORT = 8090
DEFAULT_REFRESH_SECONDS = 5


@dataclass(frozen=True)
class DashboardConfig:
    api_client_factory: ApiClientFactory
    prometheus_url: str | None
    namespace: str | None = None  # None: every namespace
    refresh_seconds: int | None = DEFAULT_REFRESH_SECONDS


def list_page(config: DashboardConfig, refresh: int | None) -> tuple[int, str]:
    problems: list[str] = []
    models: list[dict[str, Any]] = []
    try:
        with ClusterReader(config.api_client_factory) as cluster:
            models = cluster.models(config.namespace)
    except ReadError as exc:
        problems.append(str(exc))
    return 200, render.models_page(models, config.namespace, refresh=refresh, problems=problems)


def detail_page(config: DashboardConfig, namespace: str, name: str, refresh: int | None) -> tuple[int, str]:
    if config.namespace and namespace != config.namespace:
        return 404, render.error_page(404, f"this dashboard shows namespace {config.namespace} only")
    problems: list[str] = []
    now = datetime.now(UTC)
    try:
        with ClusterReader(config.api_client_factory) as cluster:
            obj = cluster.model(namespace, name)
            events: list[dict[str, Any]] = []
            jobs: list[dict[str, Any]] = []
            try:
                events = events_of(cluster.events(namespace, name), "CompressedModel", name)  # type: ignore[assignment]
            except ReadError as exc:
                problems.append(f"Events not shown: {exc}")
            try:
                jobs = cluster.jobs(namespace, name)
            except ReadError as exc:
                problems.append(f"Jobs not shown: {exc}")
    except ReadError as exc:
        status = 404 if exc.not_found else 200
        return status, render.page(
            f"{namespace}/{name}", "", refresh=refresh, problems=[str(exc)], where=f"{namespace}/{name}"
        )
    series: list[render.SLISeries] = []
    span = time_range(
        weight_steps(obj.get("spec") or {}, events),
        decisions(events),
        check_points(obj.get("status") or {}),
        now,
    )
    if span is not None:
        if config.prometheus_url:
            try:
                series = sli_series(obj, PrometheusReader(config.prometheus_url), *span)
            except ReadError as exc:
                problems.append(str(exc))
        else:
            problems.append("no Prometheus URL given (--prometheus): SLI series not shown, only the checks")
    view = render.ModelView(
        obj=obj,
        events=events,
        progress=compression_progress(obj, jobs, now),
        series=series,
        problems=problems,
        now=now,
    )
    return 200, render.model_page(view, refresh=refresh)


class _Handler(BaseHTTPRequestHandler):
    server: DashboardHTTPServer
    server_version = "kondense-dashboard"

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        config = self.server.config
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        refresh = config.refresh_seconds
        if query.get("refresh") == ["0"]:
            refresh = None
        parts = [unquote(p) for p in url.path.split("/") if p]
        content_type = "text/html; charset=utf-8"
        try:
            if parts == ["healthz"]:
                status, text, content_type = 200, "ok\n", "text/plain; charset=utf-8"
            elif not parts:
                status, text = list_page(config, refresh)
            elif len(parts) == 3 and parts[0] == "models":
                status, text = detail_page(config, parts[1], parts[2], refresh)
            else:
                status, text = 404, render.error_page(404, f"no page at {url.path}")
        except Exception as exc:  # a bug must not take a traceback to the browser: log it, name it
            log.exception("dashboard page %s failed", url.path)
            status = 500
            text = render.error_page(
                500, f"the dashboard could not render this page ({exc.__class__.__name__}); see its log"
            )
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header(
            "Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:"
        )
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class DashboardHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], config: DashboardConfig) -> None:
        self.config = config
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = host if isinstance(host, str) and host not in ("0.0.0.0", "") else "127.0.0.1"
        return f"http://{shown}:{port}"


@dataclass
class RunningDashboard:
    server: DashboardHTTPServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def make_server(
    api_client_factory: ApiClientFactory,
    prometheus_url: str | None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    namespace: str | None = None,
    refresh_seconds: int | None = DEFAULT_REFRESH_SECONDS,
) -> DashboardHTTPServer:
    """Bind the server (port 0: any free port; ``server.url`` tells which). Raises OSError when the
    address is taken."""
    config = DashboardConfig(api_client_factory, prometheus_url, namespace, refresh_seconds)
    return DashboardHTTPServer((host, port), config)


def start(
    api_client_factory: ApiClientFactory,
    prometheus_url: str | None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    namespace: str | None = None,
    refresh_seconds: int | None = DEFAULT_REFRESH_SECONDS,
) -> RunningDashboard:
    """Serve in a background (daemon) thread; ``.stop()`` ends it."""
    server = make_server(
        api_client_factory, prometheus_url, host, port, namespace=namespace, refresh_seconds=refresh_seconds
    )
    thread = threading.Thread(target=server.serve_forever, name="kondense-dashboard", daemon=True)
    thread.start()
    return RunningDashboard(server, thread)


def serve(
    api_client_factory: ApiClientFactory,
    prometheus_url: str | None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    namespace: str | None = None,
    refresh_seconds: int | None = DEFAULT_REFRESH_SECONDS,
    ready: Any = None,
) -> None:
    """Serve until interrupted. ``ready(url)`` is called once the port is bound."""
    server = make_server(
        api_client_factory, prometheus_url, host, port, namespace=namespace, refresh_seconds=refresh_seconds
    )
    if ready is not None:
        ready(server.url)
    try:
        server.serve_forever()
    finally:
        server.server_close()

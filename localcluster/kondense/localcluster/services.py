"""Services on the loopback: one HTTP proxy per Service port, spreading requests over ready endpoints.

What kube-proxy and the endpoint controllers do for kondense's Services:

* a Service with a selector gets as endpoints its namespace's **ready** pods whose labels match, at the
  host port the kubelet gave the ``targetPort`` (name or number); a Service without a selector uses the
  EndpointSlices labelled ``kubernetes.io/service-name`` (how the local Prometheus is published as
  ``prometheus.monitoring``);
* requests are spread round-robin (kube-proxy picks at random; round-robin makes the canary's share
  follow its ready-pod ratio closely even at low request rates);
* endpoints change atomically: a pod that stops being ready or is deleted gets no new requests, while
  the requests already sent to it finish (its server drains on SIGTERM); a request whose connection
  is refused or closed before an answer is retried on another endpoint (kube-proxy cannot, being L4;
  an L7 proxy does, and inference requests are safe to repeat), so pod churn fails no request.

It is an L7 proxy on aiohttp (client and server), in its own thread and event loop. Processes that are
not pods (the operator) reach Services by their cluster DNS names through :attr:`forward_proxy_url`,
an HTTP forward proxy that resolves ``<svc>.<ns>[.svc[.<domain>]]:<port>``: the operator gets it as
``HTTP_PROXY``, so a CR's ``http://prometheus.monitoring:9090`` works unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from kondense.localcluster.prometheus import free_port

log = logging.getLogger("kondense.localcluster.services")
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade", "host", "content-length",
}  # fmt: skip
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

HostPorts = Callable[[str], Mapping[str, int]]
"""pod uid -> {port name or number: host port} (the kubelet's)."""


@dataclass
class ServicePort:
    """One Service port: a loopback listener and the endpoints behind it."""

    namespace: str
    service: str
    port: int
    listen_port: int
    endpoints: list[str] = field(default_factory=list)  # "127.0.0.1:<port>"
    runner: web.AppRunner | None = None
    answered: collections.Counter[str] = field(default_factory=collections.Counter)
    """Requests answered through this Service port, by endpoint (what a test counts per pod)."""
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listen_port}"

    def order(self) -> list[str]:
        """The endpoints to try, starting from the next one in turn."""
        endpoints = self.endpoints
        if not endpoints:
            return []
        start = next(self._turn) % len(endpoints)
        return endpoints[start:] + endpoints[:start]


def matches(selector: Mapping[str, str], labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def service_endpoints(
    service: Mapping[str, Any],
    pods: list[dict[str, Any]],
    slices: list[dict[str, Any]],
    host_ports: HostPorts,
) -> dict[int, list[str]]:
    """Service port -> endpoint addresses (pure: the endpoint controller's answer)."""
    meta, spec = service["metadata"], service.get("spec") or {}
    namespace = meta.get("namespace", "default")
    out: dict[int, list[str]] = {}
    selector = spec.get("selector")
    for port in spec.get("ports") or []:
        addresses: list[str] = []
        if selector:
            target = str(port.get("targetPort", port["port"]))
            for pod in pods:
                pmeta = pod["metadata"]
                if pmeta.get("namespace") != namespace or pmeta.get("deletionTimestamp"):
                    continue
                if not matches(selector, pmeta.get("labels")) or not _ready(pod):
                    continue
                host_port = host_ports(pmeta["uid"]).get(target)
                if host_port is not None:
                    addresses.append(f"127.0.0.1:{host_port}")
        else:
            for slice_ in slices:
                smeta = slice_["metadata"]
                if smeta.get("namespace") != namespace:
                    continue
                if (smeta.get("labels") or {}).get(SERVICE_NAME_LABEL) != meta["name"]:
                    continue
                numbers = [
                    p["port"] for p in slice_.get("ports") or [] if p.get("name", "") == port.get("name", "")
                ]
                for endpoint in slice_.get("endpoints") or []:
                    if (endpoint.get("conditions") or {}).get("ready") is False:
                        continue
                    addresses += [f"{a}:{n}" for a in endpoint.get("addresses") or [] for n in numbers]
        out[int(port["port"])] = sorted(addresses)
    return out


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def parse_cluster_host(host: str, domain: str) -> tuple[str, str, int] | None:
    """``<svc>.<ns>[.svc[.<domain>]][:<port>]`` -> (service, namespace, port); None for other hosts."""
    name, _, port_text = host.rpartition(":") if ":" in host else (host, "", "80")
    if not port_text.isdigit():
        return None
    for suffix in (f".{domain}", ".svc"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    parts = name.split(".")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1], int(port_text)


class ServiceNetwork:
    """The Service proxies and the forward proxy, served from one background event loop."""

    def __init__(self, service_domain: str = "svc.cluster.local", timeout_s: float = 60.0) -> None:
        self.service_domain = service_domain
        self.timeout_s = timeout_s
        self.ports: dict[tuple[str, str, int], ServicePort] = {}
        self.forward_port = free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None
        self._forward: web.AppRunner | None = None
        self._lock = threading.Lock()

    # -- lifecycle (sync API for the cluster's thread) -------------------------------------------------
    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self._open())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=run, name="kondense-services", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("the Service proxies did not start")

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._thread, self._loop = None, None

    @property
    def forward_proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.forward_port}"

    def _call(self, coroutine: Any) -> Any:
        assert self._loop is not None, "the Service network is not running"
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(30)

    # -- state -----------------------------------------------------------------------------------------
    def address(self, service: str, namespace: str, port: int) -> str | None:
        """The loopback address of a Service port that exists (listening already)."""
        entry = self.ports.get((namespace, service, port))
        return entry.address if entry is not None else None

    def answered(self, service: str, namespace: str, port: int) -> dict[str, int]:
        """Requests answered through a Service port so far, by endpoint address ("127.0.0.1:<port>")."""
        entry = self.ports.get((namespace, service, port))
        return dict(entry.answered) if entry is not None else {}

    def sync(
        self,
        services: list[dict[str, Any]],
        pods: list[dict[str, Any]],
        slices: list[dict[str, Any]],
        host_ports: HostPorts,
    ) -> None:
        """Listeners for every Service port, endpoints from ready pods; listeners of gone Services close."""
        wanted: dict[tuple[str, str, int], list[str]] = {}
        for service in services:
            meta = service["metadata"]
            for port, endpoints in service_endpoints(service, pods, slices, host_ports).items():
                wanted[(meta.get("namespace", "default"), meta["name"], port)] = endpoints
        with self._lock:
            for key in [k for k in self.ports if k not in wanted]:
                self._call(self._close_port(self.ports.pop(key)))
            for key, endpoints in wanted.items():
                entry = self.ports.get(key)
                if entry is None:
                    entry = ServicePort(*key, listen_port=free_port())
                    self._call(self._open_port(entry))
                    self.ports[key] = entry
                if entry.endpoints != endpoints:
                    # one assignment: a request sees the old list or the new one, never a mix
                    entry.endpoints = endpoints
                    log.info("service %s/%s:%d endpoints %s", key[0], key[1], key[2], endpoints)

    # -- the proxies (event loop side) -----------------------------------------------------------------
    async def _open(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward_request)
        self._forward = web.AppRunner(app, access_log=None)
        await self._forward.setup()
        await web.TCPSite(self._forward, "127.0.0.1", self.forward_port).start()

    async def _close(self) -> None:
        for entry in list(self.ports.values()):
            await self._close_port(entry)
        self.ports.clear()
        if self._forward is not None:
            await self._forward.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _open_port(self, entry: ServicePort) -> None:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._proxy(
                request, entry.order(), f"{entry.namespace}/{entry.service}:{entry.port}", entry.answered
            )

        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", handle)
        entry.runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await entry.runner.setup()
        await web.TCPSite(entry.runner, "127.0.0.1", entry.listen_port).start()

    async def _close_port(self, entry: ServicePort) -> None:
        if entry.runner is not None:
            await entry.runner.cleanup()

    async def _forward_request(self, request: web.Request) -> web.StreamResponse:
        host = request.headers.get("Host") or request.url.host or ""
        parsed = parse_cluster_host(host, self.service_domain)
        address = self.address(*parsed) if parsed else None
        if address is None:
            return web.Response(status=502, text=f"the local cluster has no Service for host {host!r}\n")
        return await self._proxy(request, [address], host)

    async def _proxy(
        self,
        request: web.Request,
        endpoints: list[str],
        what: str,
        answered: collections.Counter[str] | None = None,
    ) -> web.StreamResponse:
        if not endpoints:
            return web.Response(status=503, text=f"no ready endpoints for Service {what}\n")
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        path = (
            request.rel_url.path_qs
            if not request.rel_url.is_absolute()
            else request.rel_url.relative().path_qs
        )
        failure: Exception | None = None
        for endpoint in endpoints:
            try:
                async with self._session.request(
                    request.method,
                    f"http://{endpoint}{path}",
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                ) as response:
                    payload = await response.read()
                    out_headers = {k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP}
                    if answered is not None:
                        answered[endpoint] += 1
                    return web.Response(status=response.status, body=payload, headers=out_headers)
            except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
                failure = exc  # refused, or closed without an answer (a draining pod): try the next one
            except (aiohttp.ClientError, TimeoutError) as exc:
                return web.Response(status=502, text=f"{what}: {endpoint}: {type(exc).__name__}: {exc}\n")
        return web.Response(status=502, text=f"{what}: no endpoint answered: {failure}\n")

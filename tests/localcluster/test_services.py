"""Services on loopback: endpoints from ready pods (or EndpointSlices), round-robin spreading, and
draining: endpoints removed mid-flight, or a pod gone, fail no request."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from kondense.localcluster.prometheus import free_port
from kondense.localcluster.services import ServiceNetwork, parse_cluster_host, service_endpoints

pytestmark = pytest.mark.timeout(120)


def pod(name: str, labels: dict[str, str], ready: bool = True, namespace: str = "ml") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": name, "labels": labels},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def service(name: str, selector: dict[str, str] | None, port: int = 8080) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"name": "http", "port": port, "targetPort": "http"}]}
    if selector:
        spec["selector"] = selector
    return {"metadata": {"name": name, "namespace": "ml"}, "spec": spec}


def test_endpoints_are_the_ready_matching_pods_at_their_host_ports() -> None:
    pods = [
        pod("a", {"model": "digits", "track": "stable"}),
        pod("b", {"model": "digits", "track": "canary"}),
        pod("c", {"model": "digits", "track": "canary"}, ready=False),
        pod("d", {"model": "digits", "track": "canary"}, namespace="other"),
    ]
    ports = {"a": {"http": 5001}, "b": {"http": 5002}, "c": {"http": 5003}, "d": {"http": 5004}}
    everything = service_endpoints(service("digits", {"model": "digits"}), pods, [], lambda uid: ports[uid])
    assert everything == {8080: ["127.0.0.1:5001", "127.0.0.1:5002"]}
    canary = service_endpoints(
        service("c", {"model": "digits", "track": "canary"}), pods, [], lambda u: ports[u]
    )
    assert canary == {8080: ["127.0.0.1:5002"]}
    slices = [{
        "metadata": {"name": "prom", "namespace": "ml", "labels": {"kubernetes.io/service-name": "prometheus"}},
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 9999}],
    }]  # fmt: skip
    assert service_endpoints(service("prometheus", None, 9090), [], slices, lambda u: {}) == {
        9090: ["127.0.0.1:9999"]
    }


def test_cluster_host_names() -> None:
    assert parse_cluster_host("prometheus.monitoring:9090", "svc.cluster.local") == (
        "prometheus",
        "monitoring",
        9090,
    )
    assert parse_cluster_host("d.ml.svc.cluster.local:8080", "svc.cluster.local") == ("d", "ml", 8080)
    assert parse_cluster_host("d.ml.svc", "svc.cluster.local") == ("d", "ml", 80)
    assert parse_cluster_host("example.org.uk:80", "svc.cluster.local") is None


class Backends:
    """Real HTTP servers in a thread: each answers with its name after an optional delay."""

    def __init__(self, count: int, delay_s: float = 0.0) -> None:
        self.ports = [free_port() for _ in range(count)]
        self.delay_s = delay_s
        self.loop = asyncio.new_event_loop()
        self.runners: list[web.AppRunner] = []
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def setup() -> None:
            for i, port in enumerate(self.ports):

                async def answer(request: web.Request, name: str = f"pod-{i}") -> web.Response:
                    await request.read()
                    await asyncio.sleep(self.delay_s)
                    return web.Response(text=name)

                app = web.Application()
                app.router.add_post("/infer", answer)
                runner = web.AppRunner(app)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", port).start()
                self.runners.append(runner)

        self.loop.run_until_complete(setup())
        started.set()
        self.loop.run_forever()

    def stop_one(self, index: int) -> None:
        asyncio.run_coroutine_threadsafe(self.runners[index].cleanup(), self.loop).result(10)

    def close(self) -> None:
        for runner in self.runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def network() -> Iterator[ServiceNetwork]:
    net = ServiceNetwork()
    net.start()
    yield net
    net.stop()


def sync(net: ServiceNetwork, backends: Backends, ready: list[int]) -> str:
    pods = [pod(f"p{i}", {"app": "m"}) for i in ready]
    net.sync([service("m", {"app": "m"})], pods, [], lambda uid: {"http": backends.ports[int(uid[1:])]})
    address = net.address("m", "ml", 8080)
    assert address is not None
    return f"http://{address}/infer"


def test_requests_spread_over_ready_pods_and_follow_endpoint_changes(network: ServiceNetwork) -> None:
    backends = Backends(3)
    try:
        url = sync(network, backends, [0, 1, 2])
        answers = Counter(httpx.post(url, content=b"x").text for _ in range(30))
        assert answers == {"pod-0": 10, "pod-1": 10, "pod-2": 10}
        url = sync(network, backends, [2])
        assert {httpx.post(url, content=b"x").text for _ in range(5)} == {"pod-2"}
        url = sync(network, backends, [])
        response = httpx.post(url, content=b"x")
        assert response.status_code == 503 and "no ready endpoints" in response.text
        network.sync([], [], [], lambda uid: {})  # the Service is deleted: its listener closes
        assert network.address("m", "ml", 8080) is None
    finally:
        backends.close()


def test_draining_fails_no_request(network: ServiceNetwork) -> None:
    backends = Backends(2, delay_s=0.5)
    try:
        url = sync(network, backends, [0, 1])

        async def burst() -> list[int]:
            async with httpx.AsyncClient(timeout=10) as client:
                requests = [asyncio.create_task(client.post(url, content=b"x")) for _ in range(10)]
                await asyncio.sleep(0.2)  # in flight on both pods
                sync(network, backends, [1])  # pod 0 leaves the endpoints mid-flight
                return [r.status_code for r in await asyncio.gather(*requests)]

        assert asyncio.run(burst()) == [200] * 10
        # a pod that died while still listed (no readiness change yet): its requests go elsewhere
        url = sync(network, backends, [0, 1])
        backends.stop_one(0)
        answers = [httpx.post(url, content=b"x", timeout=10) for _ in range(6)]
        assert [a.status_code for a in answers] == [200] * 6 and {a.text for a in answers} == {"pod-1"}
    finally:
        backends.close()

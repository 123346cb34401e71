"""The dashboard's HTTP server against the local Kubernetes API (in process, real HTTP), with an API
or a Prometheus that cannot answer: every page renders, what could not be read is a banner, no
traceback reaches the page, and nothing is written to the cluster."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import kubernetes
import pytest
import yaml

from kondense.api.crd import crd
from kondense.api.resource import GROUP, PLURAL, VERSION
from kondense.dashboard.data import url_client_factory
from kondense.dashboard.server import RunningDashboard, start
from kondense.localcluster import LocalAPIServer
from kondense.localcluster.prometheus import free_port
from kondense_testing.paths import EXAMPLES

STATUS = {
    "phase": "Canary",
    "message": "canary int8 at 50%",
    "hashes": {"run": "abcdef123456"},
    "base": {"name": "base", "phase": "Succeeded"},
    "selectedVariant": "int8",
    "variants": [
        {"name": "int8", "phase": "Succeeded", "technique": "static-int8",
         "metrics": {"sizeRatio": 0.266, "p50Ms": 0.021, "accuracyDelta": 0.0}},
        {"name": "fp16", "phase": "Rejected", "technique": "fp16", "reason": "BudgetNotMet",
         "metrics": {"sizeRatio": 0.51, "p50Ms": 0.03, "accuracyDelta": 0.03}},
    ],
    "canary": {
        "variant": "int8", "step": 1, "weight": 50, "requestedWeight": 50, "failedChecks": 0,
        "checks": [{"time": "2026-12-02T08:29:04Z", "variant": "int8", "sli": "errorRate", "value": 0.0,
                    "threshold": 0.01, "window": "30s", "passed": True}],
    },
}  # fmt: skip


def event(reason: str, message: str, time: str) -> dict[str, Any]:
    return {
        "metadata": {"generateName": "digits."},
        "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CompressedModel", "name": "digits",
                           "namespace": "default"},
        "reason": reason, "message": message, "type": "Normal", "source": {"component": "kopf"},
        "firstTimestamp": time, "lastTimestamp": time,
    }  # fmt: skip


@pytest.fixture(scope="module")
def api() -> Iterator[LocalAPIServer]:
    with LocalAPIServer() as server:
        client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=server.url))
        kubernetes.client.ApiextensionsV1Api(client).create_custom_resource_definition(crd())  # type: ignore[arg-type]
        custom = kubernetes.client.CustomObjectsApi(client)
        body = yaml.safe_load((EXAMPLES / "digits" / "compressedmodel.yaml").read_text())
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, "default", PLURAL, "digits", {"status": STATUS}
        )
        core = kubernetes.client.CoreV1Api(client)
        for reason, message, time in (
            ("CanaryStarted", "int8 selected (pass); fallbacks: none", "2026-12-02T08:28:00Z"),
            ("CanaryStep", "int8 → 50%: errorRate=0<=0.01 over 30s", "2026-12-02T08:29:04Z"),
        ):
            core.create_namespaced_event("default", event(reason, message, time))  # type: ignore[arg-type]
        client.close()
        yield server


def snapshot(server: LocalAPIServer) -> list[tuple[str, str, str]]:
    return sorted(
        (o["kind"], o["metadata"].get("name", ""), str(o["metadata"].get("resourceVersion")))
        for o in server.dump()
    )


@pytest.fixture
def dashboard(api: LocalAPIServer) -> Iterator[RunningDashboard]:
    nowhere = f"http://127.0.0.1:{free_port()}"  # Prometheus is down
    running = start(url_client_factory(api.url), nowhere, port=0)
    try:
        yield running
    finally:
        running.stop()


def test_model_page_from_the_api_with_prometheus_down(
    api: LocalAPIServer, dashboard: RunningDashboard
) -> None:
    before = snapshot(api)
    listing = httpx.get(f"{dashboard.url}/", timeout=30)
    assert listing.status_code == 200
    assert 'data-name="digits"' in listing.text and "50%" in listing.text
    assert 'http-equiv="refresh" content="5"' in listing.text
    assert 'class="banner"' not in listing.text
    page = httpx.get(f"{dashboard.url}/models/default/digits", timeout=30)
    assert page.status_code == 200
    text = page.text
    assert text.count('class="variant') == 2 + 2  # two Pareto points, two table rows
    assert 'data-weight="50"' in text
    assert 'data-reason="CanaryStep"' in text and "int8 → 50%: errorRate=0&lt;=0.01 over 30s" in text
    assert text.count('class="banner"') == 1
    assert "Prometheus at http://127.0.0.1:" in text and "is unreachable" in text
    assert "Traceback" not in text
    assert snapshot(api) == before  # read-only


def test_missing_pages_and_health(dashboard: RunningDashboard) -> None:
    missing = httpx.get(f"{dashboard.url}/models/default/nope", timeout=30)
    assert missing.status_code == 404 and "not found" in missing.text
    assert httpx.get(f"{dashboard.url}/elsewhere", timeout=30).status_code == 404
    health = httpx.get(f"{dashboard.url}/healthz", timeout=30)
    assert (health.status_code, health.text) == (200, "ok\n")
    assert httpx.head(f"{dashboard.url}/", timeout=30).status_code == 200
    no_refresh = httpx.get(f"{dashboard.url}/?refresh=0", timeout=30)
    assert 'http-equiv="refresh"' not in no_refresh.text


def test_api_down_is_a_banner_not_a_traceback() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    running = start(url_client_factory(nowhere), None, port=0)
    try:
        for path in ("/", "/models/default/digits"):
            page = httpx.get(f"{running.url}{path}", timeout=60)
            assert page.status_code == 200
            assert f"the Kubernetes API at {nowhere} is unreachable" in page.text
            assert "Traceback" not in page.text
    finally:
        running.stop()


def test_one_namespace_only(api: LocalAPIServer) -> None:
    running = start(url_client_factory(api.url), None, port=0, namespace="other")
    try:
        assert 'id="no-models"' in httpx.get(f"{running.url}/", timeout=30).text
        assert httpx.get(f"{running.url}/models/default/digits", timeout=30).status_code == 404
    finally:
        running.stop()


def test_without_prometheus_the_checks_are_still_drawn(api: LocalAPIServer) -> None:
    running = start(url_client_factory(api.url), None, port=0)
    try:
        text = httpx.get(f"{running.url}/models/default/digits", timeout=30).text
        assert "no Prometheus URL given" in text
        assert 'class="check pass"' in text
    finally:
        running.stop()

"""The kind path's assets: cluster config, example-models volume, and the Prometheus that scrapes pods.

The relabeling is proven by a real Prometheus: the kind scrape job runs with its kubernetes_sd
replaced by static targets carrying the same __meta_kubernetes_* labels pod discovery produces.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart_support import ALL_FEATURES, REPO, Render, by_kind, one, parse_documents, run

KIND_CONFIG = REPO / "kind-config.yaml"
PROMETHEUS_MANIFESTS = REPO / "deploy" / "kind" / "prometheus.yaml"
MODELS_PV = REPO / "deploy" / "kind" / "models-pv.yaml"


def manifests(path: Path) -> list[dict[str, Any]]:
    return parse_documents(path.read_text())


def kind_prometheus_config() -> dict[str, Any]:
    config_map = one(manifests(PROMETHEUS_MANIFESTS), "ConfigMap")
    parsed: dict[str, Any] = yaml.safe_load(config_map["data"]["prometheus.yml"])
    return parsed


@pytest.mark.parametrize("path", [PROMETHEUS_MANIFESTS, MODELS_PV], ids=lambda p: p.name)
def test_kind_manifests_validate(path: Path) -> None:
    for obj in manifests(path):
        for version in ("1.28", "1.35"):
            kubernetes_validate.validate(obj, version, strict=True)


def test_models_volume_matches_kind_mount_and_example() -> None:
    config = yaml.safe_load(KIND_CONFIG.read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    (node,) = config["nodes"]
    (mount,) = node["extraMounts"]
    assert (REPO / mount["hostPath"]).resolve() == REPO / "examples" / "models"
    assert mount.get("readOnly") is False  # compression Jobs write artifacts next to the models

    objects = manifests(MODELS_PV)
    volume, claim = one(objects, "PersistentVolume"), one(objects, "PersistentVolumeClaim")
    assert volume["spec"]["hostPath"]["path"] == mount["containerPath"]
    assert claim["spec"]["volumeName"] == volume["metadata"]["name"]
    assert claim["spec"]["storageClassName"] == volume["spec"]["storageClassName"] == ""
    assert "namespace" not in claim["metadata"]  # applied into the demo namespace

    # Every pvc:// URI of the digits example names this claim, under the directory `make kind-models` fills.
    example = (REPO / "examples" / "digits" / "compressedmodel.yaml").read_text()
    uris = [u.rstrip("}, ") for u in example.split() if u.startswith("pvc://")]
    assert uris, "examples/digits uses no pvc:// URI"
    for uri in uris:
        parsed = urllib.parse.urlparse(uri)
        assert parsed.netloc == claim["metadata"]["name"] and parsed.path.startswith("/digits/"), uri
    made = run(["make", "-s", "-n", "kind-models"], cwd=REPO)
    assert "example digits --out examples/models/digits" in made.stdout, made.stdout + made.stderr
    assert "deploy/kind/models-pv.yaml" in made.stdout


def test_kind_prometheus_serves_the_url_the_examples_name() -> None:
    objects = manifests(PROMETHEUS_MANIFESTS)
    service = one(objects, "Service")
    url = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}:{service['spec']['ports'][0]['port']}"
    assert url == "http://prometheus.monitoring:9090"
    assert url in (REPO / "examples" / "digits" / "compressedmodel.yaml").read_text()
    (role,) = by_kind(objects, "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]


def test_kind_prometheus_config_passes_promtool(promtool: str, tmp_path: Path) -> None:
    """Debian's Prometheus is built without Kubernetes discovery, so promtool checks everything but
    the `kubernetes_sd_configs: [{role: pod}]` block, which is asserted as is and swapped for a
    static target (the relabeling test below runs the same job for real)."""
    prometheus = kind_prometheus_config()
    for job in prometheus["scrape_configs"]:
        if job["job_name"] == "kubernetes-pods":
            assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
            job["static_configs"] = [{"targets": ["pod.invalid:8080"]}]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus))
    result = run([promtool, "check", "config", str(config)])
    assert result.returncode == 0, result.stdout + result.stderr


OPERATOR_METRICS = b'kondense_canary_weight{namespace="ml",name="digits"} 25\n'
SERVER_METRICS = b'kondense_requests_total{model="digits",variant="canary",code="200"} 7\n'


class MetricsHandler(BaseHTTPRequestHandler):
    paths: list[str] = []  # noqa: RUF012 - shared on purpose: the test reads which paths were scraped

    def do_GET(self) -> None:
        self.paths.append(self.path)
        body = {"/metrics": SERVER_METRICS, "/operator/metrics": OPERATOR_METRICS}.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def metrics_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), MetricsHandler)
    MetricsHandler.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def pod(name: str, namespace: str, port: int, **meta: str) -> dict[str, Any]:
    labels = {
        "__address__": f"{name}.invalid:1",  # kubernetes_sd's address is replaced by relabeling
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": name,
        "__meta_kubernetes_pod_ip": "127.0.0.1",
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
        "__meta_kubernetes_pod_annotation_prometheus_io_port": str(port),
        **{f"__meta_kubernetes_{k}": v for k, v in meta.items()},
    }
    return {"targets": [labels.pop("__address__")], "labels": labels}


def query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        result: list[dict[str, Any]] = json.load(response)["data"]["result"]
        return result


def start_prometheus(prometheus_bin: str, tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    """A real Prometheus on tmp_path/prometheus.yml; the caller stops it."""
    web = free_port()
    process = subprocess.Popen(
        [prometheus_bin, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{web}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return process, f"http://127.0.0.1:{web}"


def test_kind_prometheus_relabeling_with_a_real_prometheus(
    prometheus_bin: str, metrics_server: int, tmp_path: Path
) -> None:
    config = kind_prometheus_config()
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "kubernetes-pods")
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    port = metrics_server
    job["static_configs"] = [
        pod("digits-canary-1", "ml", port, pod_annotation_prometheus_io_path="/metrics",
            pod_label_app_kubernetes_io_name="kondense-server", pod_label_kondense_dev_track="canary"),
        pod("kondense-operator-1", "kondense", port, pod_annotation_prometheus_io_path="/operator/metrics",
            pod_label_app_kubernetes_io_name="kondense"),
        pod("not-annotated", "ml", port, pod_annotation_prometheus_io_scrape="false"),
        pod("finished-job", "ml", port, pod_phase="Succeeded"),
    ]  # fmt: skip
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["scrape_configs"] = [job]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))

    process, base = start_prometheus(prometheus_bin, tmp_path)
    try:
        deadline = time.monotonic() + 30
        server: list[dict[str, Any]] = []
        operator: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not (server and operator):
            time.sleep(0.5)
            try:
                server = query(base, "kondense_requests_total")
                operator = query(base, "kondense_canary_weight")
            except OSError:
                continue
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert server and operator, "Prometheus scraped nothing within 30s"

        (sample,) = server
        labels = sample["metric"]
        assert labels["namespace"] == "ml" and labels["pod"] == "digits-canary-1"
        assert labels["app"] == "kondense-server" and labels["track"] == "canary"
        assert labels["model"] == "digits" and labels["variant"] == "canary"
        assert labels["instance"] == f"127.0.0.1:{port}"
        (sample,) = operator
        # honor_labels: the operator's own `namespace` (the CompressedModel's) wins over its pod's.
        assert sample["metric"]["namespace"] == "ml" and sample["metric"]["pod"] == "kondense-operator-1"
        assert "exported_namespace" not in sample["metric"]

        with urllib.request.urlopen(f"{base}/api/v1/targets?state=active", timeout=5) as response:
            active = json.load(response)["data"]["activeTargets"]
        assert sorted(t["labels"]["pod"] for t in active) == ["digits-canary-1", "kondense-operator-1"]
        assert set(MetricsHandler.paths) == {"/metrics", "/operator/metrics"}
    finally:
        process.terminate()
        process.wait(timeout=10)


def snake_case_relabelings(relabelings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """prometheus-operator's camelCase RelabelConfig, as it writes it into prometheus.yml."""
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return [{names.get(k, k): v for k, v in r.items()} for r in relabelings]


def test_pod_monitor_keeps_only_the_annotated_port_with_a_real_prometheus(
    render: Render, prometheus_bin: str, metrics_server: int, tmp_path: Path
) -> None:
    """The chart PodMonitor's relabelings, run by a real Prometheus over the targets pod discovery
    yields without a port filter: one per container port. Only the annotated port survives."""
    endpoint = one(render(ALL_FEATURES), "PodMonitor")["spec"]["podMetricsEndpoints"][0]
    assert "port" not in endpoint and "portNumber" not in endpoint
    port = metrics_server
    other = free_port()  # a second container port on the same pod: must not be scraped

    def container_port(number: int, name: str) -> dict[str, Any]:
        target = pod("digits-canary-1", "ml", port, pod_container_port_number=str(number),
                     pod_container_port_name=name)  # fmt: skip
        target["targets"] = [f"127.0.0.1:{number}"]  # what pod discovery sets per container port
        return target

    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "podmonitor",
                "metrics_path": endpoint["path"],
                "static_configs": [container_port(port, "http"), container_port(other, "grpc")],
                "relabel_configs": snake_case_relabelings(endpoint["relabelings"]),
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    process, base = start_prometheus(prometheus_bin, tmp_path)
    try:
        deadline = time.monotonic() + 30
        samples: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not samples:
            time.sleep(0.5)
            try:
                samples = query(base, "kondense_requests_total")
            except OSError:
                continue
        assert samples, "Prometheus scraped nothing within 30s"
        with urllib.request.urlopen(f"{base}/api/v1/targets", timeout=5) as response:
            data = json.load(response)["data"]
        assert [t["scrapeUrl"] for t in data["activeTargets"]] == [f"http://127.0.0.1:{port}/metrics"]
    finally:
        process.terminate()
        process.wait(timeout=10)

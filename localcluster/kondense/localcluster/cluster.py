"""LocalCluster: the embedded cluster ``make demo`` and the scenario tests run kondense in.

Stood in for: the control plane (``LocalAPIServer``, kmock's emulator with real API semantics, plus the
Deployment/Job controllers in :mod:`~kondense.localcluster.controllers`) and the container runtime (the
process kubelet in :mod:`~kondense.localcluster.kubelet`, Services as loopback proxies in
:mod:`~kondense.localcluster.services`). Real: the operator process (``kondense operator``, unmodified,
logged in with a kubeconfig), compression Jobs, ``kondense serve`` pods, Prometheus (the Debian binary)
scraping them, the load generator Job, PromQL and every decision.

Layout of the work directory::

    kubeconfig            for kubectl-like access (the operator uses it)
    pvc/<claim>/          PersistentVolumeClaims (the operator runs with KONDENSE_PVC_ROOT=<workdir>/pvc,
                          so pvc://models/digits/... is a real path for every pod)
    pods/<ns>_<pod>_<uid>/  emptyDir volumes and termination-message files per pod
    logs/operator.log, logs/cluster.log, logs/<ns>_<pod>_<container>.log
    prometheus/           Prometheus' config, file_sd targets, TSDB and log
    objects.json          every object in the local API (written by ``dump``)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kondense.api.crd import crd
from kondense.localcluster import store
from kondense.localcluster.apiserver import LocalAPIServer
from kondense.localcluster.client import APIClient, APIError, register_kind
from kondense.localcluster.controllers import Controllers
from kondense.localcluster.kubelet import NODE_NAME, POD_IP, ExtraArgs, Kubelet, NodeContext, now_iso
from kondense.localcluster.prometheus import LocalPrometheus, free_port
from kondense.localcluster.services import SERVICE_NAME_LABEL, ServiceNetwork

log = logging.getLogger("kondense.localcluster")
PROMETHEUS_NAMESPACE, PROMETHEUS_SERVICE, PROMETHEUS_PORT = "monitoring", "prometheus", 9090
SCRAPE_ANNOTATION, PORT_ANNOTATION = "prometheus.io/scrape", "prometheus.io/port"


def _register_crd_kind(definition: Mapping[str, Any]) -> str:
    spec = definition["spec"]
    version = next(v["name"] for v in spec["versions"] if v.get("storage"))
    register_kind(
        spec["names"]["kind"], f"{spec['group']}/{version}", spec["names"]["plural"],
        cluster_scoped=spec["scope"] == "Cluster",
    )  # fmt: skip
    return str(spec["names"]["kind"])


# The generic client knows the built-in kinds; the kondense resource comes from its CRD.
COMPRESSED_MODEL = _register_crd_kind(crd())


# The project's images and their Dockerfiles' ENTRYPOINT (operator/, compression/, serving/Dockerfile):
# what the process kubelet runs for a container without ``command`` (the Helm chart's operator), any
# registry and tag.
IMAGE_ENTRYPOINTS: dict[str, tuple[str, ...]] = {
    "kondense/operator": ("kondense",),
    "kondense/compression": ("kondense-compress",),
    "kondense/serving": ("kondense",),
}


class ClusterError(RuntimeError):
    pass


@dataclass(frozen=True)
class ClusterPaths:
    workdir: Path

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def pvc(self) -> Path:
        return self.workdir / "pvc"

    @property
    def pods(self) -> Path:
        return self.workdir / "pods"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def prometheus(self) -> Path:
        return self.workdir / "prometheus"

    @property
    def operator_log(self) -> Path:
        return self.logs / "operator.log"

    @property
    def dump(self) -> Path:
        return self.workdir / "objects.json"


class LocalCluster:
    """Start with :meth:`start` (or ``with``); :meth:`stop` ends every process it started."""

    def __init__(
        self,
        workdir: Path,
        namespace: str = "default",
        *,
        claims: tuple[str, ...] = ("models",),
        tick_seconds: float = 0.25,
        operator_tick_seconds: float = 1.0,
        scrape_interval: str = "1s",
        extra_args: ExtraArgs | None = None,
        service_domain: str = "svc.cluster.local",
        operator_env: Mapping[str, str] | None = None,
        bin_dirs: tuple[str, ...] = (),
        api_port: int | None = None,
        prometheus_port: int | None = None,
        state_file: Path | None = None,
    ) -> None:
        self.paths = ClusterPaths(workdir.resolve())
        # ``kondense up``: the API's objects are restored from and saved to this file (see store.py)
        self.state_file = state_file
        self._saved_revision: int | None = None
        self.namespace = namespace
        self.claims = claims
        self.tick_seconds = tick_seconds
        self.operator_tick_seconds = operator_tick_seconds
        self.service_domain = service_domain
        self.operator_env = dict(operator_env or {})
        # kubectl logs reads the kubelet's files
        self.api = LocalAPIServer(port=api_port, pod_logs_dir=self.paths.logs)
        self.prometheus = LocalPrometheus(
            self.paths.prometheus, scrape_interval=scrape_interval, port=prometheus_port
        )
        self.network = ServiceNetwork(service_domain)
        self.extra_args = extra_args
        self.bin_dirs = bin_dirs  # searched for container commands before the venv's scripts
        self.operator: subprocess.Popen[bytes] | None = None
        self._operator_pids: list[int] = []
        self.operator_metrics_port = free_port()
        self._client: APIClient | None = None
        self._kubelet: Kubelet | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._targets: list[tuple[str, dict[str, str]]] | None = None
        self._namespaces: set[str] = set()
        self.tick_errors = 0
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, with_operator: bool = True) -> LocalCluster:
        for directory in (self.paths.pvc, self.paths.pods, self.paths.logs):
            directory.mkdir(parents=True, exist_ok=True)
        self._started = True
        self._log_to_file()
        self.api.start()
        self._restore_state()
        self.api.write_kubeconfig(self.paths.kubeconfig, self.namespace)
        self._client = APIClient(self.api.url)
        self._bootstrap()
        self.prometheus.start()
        self._publish_prometheus()
        self.network.start()
        ctx = NodeContext(
            pvc_dir=self.paths.pvc,
            service_address=self.network.address,
            namespace_exists=lambda ns: ns in self._namespaces,
            service_domain=self.service_domain,
            bin_dirs=(*self.bin_dirs, str(Path(sys.executable).parent)),
            in_cluster_env=self._in_cluster_env(),
            image_entrypoints=IMAGE_ENTRYPOINTS,
        )
        self._kubelet = Kubelet(
            APIClient(self.api.url), self.paths.pods, self.paths.logs, ctx, self.extra_args
        )
        self._thread = threading.Thread(target=self._run, name="kondense-node", daemon=True)
        self._thread.start()
        if with_operator:
            self.start_operator()
        return self

    def stop(self) -> None:
        """Stop everything this cluster started (safe to call twice, and after a failed start)."""
        if not self._started:
            return
        self._started = False
        self.stop_operator()
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(30)
        if self._kubelet is not None:
            self._kubelet.shutdown()
        self.network.stop()
        self.prometheus.stop()
        try:
            self.dump()
        except Exception as exc:  # the API may have failed; the dump is a convenience
            log.warning("could not write %s: %s", self.paths.dump, exc)
        if self.state_file is not None and self._saved_revision is not None:  # the API came up
            self.save_state()  # errors propagate: losing the objects must not go unnoticed
        self.api.stop()
        if self._client is not None:
            self._client.close()

    @property
    def client(self) -> APIClient:
        if self._client is None:
            raise ClusterError("the local cluster is not running")
        return self._client

    def _log_to_file(self) -> None:
        handler = logging.FileHandler(self.paths.logs / "cluster.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("kondense.localcluster")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False

    def _bootstrap(self) -> None:
        client = self.client
        _ensure(lambda: client.create_at("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd()))
        for namespace in {self.namespace, PROMETHEUS_NAMESPACE}:
            if client.get("Namespace", None, namespace) is None:
                client.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        self._namespaces = {ns["metadata"]["name"] for ns in client.list("Namespace")}
        _ensure(lambda: client.create({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME}},
        }))  # fmt: skip
        cpus, memory = os.cpu_count() or 1, _memory_bytes()
        client.patch_status("Node", None, NODE_NAME, {
            "capacity": {"cpu": str(cpus), "memory": str(memory), "pods": "110"},
            "allocatable": {"cpu": str(cpus), "memory": str(memory), "pods": "110"},
            "addresses": [{"type": "InternalIP", "address": POD_IP}, {"type": "Hostname", "address": NODE_NAME}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status (local processes)",
                            "lastHeartbeatTime": now_iso(), "lastTransitionTime": now_iso()}],
        })  # fmt: skip
        for claim in self.claims:
            (self.paths.pvc / claim).mkdir(parents=True, exist_ok=True)
            _ensure(lambda claim=claim: client.create({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": self.namespace},
                "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
            }))  # fmt: skip
            client.patch_status("PersistentVolumeClaim", self.namespace, claim, {
                "phase": "Bound", "accessModes": ["ReadWriteMany"], "capacity": {"storage": "1Gi"}})  # fmt: skip

    def _publish_prometheus(self) -> None:
        """``prometheus.monitoring:9090`` as a selector-less Service with a manual EndpointSlice."""
        client = self.client
        _ensure(lambda: client.create({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": PROMETHEUS_SERVICE, "namespace": PROMETHEUS_NAMESPACE},
            "spec": {"ports": [{"name": "http", "port": PROMETHEUS_PORT, "protocol": "TCP"}]},
        }))  # fmt: skip
        # (again) on every start: Prometheus may listen on another port than before a restart
        client.delete("EndpointSlice", PROMETHEUS_NAMESPACE, f"{PROMETHEUS_SERVICE}-local")
        client.create({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{PROMETHEUS_SERVICE}-local", "namespace": PROMETHEUS_NAMESPACE,
                         "labels": {SERVICE_NAME_LABEL: PROMETHEUS_SERVICE}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [POD_IP], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": self.prometheus.port, "protocol": "TCP"}],
        })  # fmt: skip

    # -- the objects on disk (``kondense up``) ---------------------------------------------------------
    def _restore_state(self) -> None:
        if self.state_file is None:
            return
        state = store.load(self.state_file)
        if state is not None:
            count = self.api.call(store.restore(self.api.emulator, state))
            log.info("restored %d objects from %s", count, self.state_file)
        self._saved_revision = store.revision(self.api.emulator)

    def save_state(self) -> bool:
        """Write the API's objects to ``state_file`` if anything changed since the last save."""
        if self.state_file is None:
            raise ClusterError("this cluster keeps no state file")
        if store.revision(self.api.emulator) == self._saved_revision:
            return False
        state = self.api.call(store.snapshot(self.api.emulator))
        store.write_atomically(self.state_file, state)
        self._saved_revision = state["revision"]
        return True

    # -- the node loop ---------------------------------------------------------------------------------
    def _run(self) -> None:
        client = APIClient(self.api.url)
        try:
            controllers = Controllers(client)
            while not self._stopping.is_set():
                try:
                    self._tick(client, controllers)
                except (APIError, OSError) as exc:  # e.g. the API restarting; the next tick retries
                    self.tick_errors += 1
                    log.warning("node loop: %s", exc)
                self._stopping.wait(self.tick_seconds)
        except Exception:
            log.exception("the node loop failed")
            raise
        finally:
            client.close()

    def _tick(self, client: APIClient, controllers: Controllers) -> None:
        assert self._kubelet is not None
        pods = client.list("Pod")
        if controllers.sync(pods, datetime.now(UTC)):
            pods = client.list("Pod")
        self._namespaces = {ns["metadata"]["name"] for ns in client.list("Namespace")}
        # endpoints first: a deleted pod leaves its Services before its process gets SIGTERM
        self.network.sync(
            client.list("Service"), pods, client.list("EndpointSlice"), self._kubelet.host_ports
        )
        self._kubelet.sync(pods)
        self._update_scrape_targets(pods)

    def _update_scrape_targets(self, pods: list[dict[str, Any]]) -> None:
        assert self._kubelet is not None
        targets = []
        for pod in pods:
            meta = pod["metadata"]
            annotations = meta.get("annotations") or {}
            if annotations.get(SCRAPE_ANNOTATION) != "true" or not _ready(pod):
                continue
            port = self._kubelet.host_ports(meta["uid"]).get(annotations.get(PORT_ANNOTATION, ""))
            if port is not None:
                targets.append((f"{POD_IP}:{port}", {"namespace": meta["namespace"], "pod": meta["name"]}))
        targets.sort()
        if targets != self._targets:
            self.prometheus.set_targets(targets)
            self._targets = targets

    def _in_cluster_env(self) -> dict[str, str]:
        """What pods that mount their ServiceAccount token get: the API and cluster DNS names."""
        proxy, local = self.network.forward_proxy_url, "127.0.0.1,localhost"
        return {"KUBECONFIG": str(self.paths.kubeconfig), "HTTP_PROXY": proxy, "http_proxy": proxy,
                "NO_PROXY": local, "no_proxy": local}  # fmt: skip

    # -- the operator process --------------------------------------------------------------------------
    def operator_environment(self) -> dict[str, str]:
        proxy = self.network.forward_proxy_url
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(
            KUBECONFIG=str(self.paths.kubeconfig),
            KONDENSE_PVC_ROOT=str(self.paths.pvc),
            KONDENSE_TICK_SECONDS=str(self.operator_tick_seconds),
            KONDENSE_METRICS_PORT=str(self.operator_metrics_port),
            KONDENSE_HEALTH_PORT=str(free_port()),
            KONDENSE_SERVICE_DOMAIN=self.service_domain,
            # cluster DNS names (prometheus.monitoring:9090, <svc>.<ns>.svc...) through the Service network;
            # the API server is reached directly
            HTTP_PROXY=proxy, http_proxy=proxy, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
        )  # fmt: skip
        env.update(self.operator_env)
        return env

    def start_operator(self) -> None:
        if self.operator is not None and self.operator.poll() is None:
            raise ClusterError("the operator is already running")
        out = open(self.paths.operator_log, "ab")  # noqa: SIM115 - the child holds it
        self.operator = subprocess.Popen(
            [str(Path(sys.executable).parent / "kondense"), "operator", "--namespace", self.namespace],
            env=self.operator_environment(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        out.close()
        self._operator_pids.append(self.operator.pid)

    def kill_operator(self) -> None:
        """SIGKILL, as a node failure or an OOM kill would end it: no cleanup, no finalizers run."""
        if self.operator is not None and self.operator.poll() is None:
            os.killpg(self.operator.pid, signal.SIGKILL)
            self.operator.wait()

    def stop_operator(self, timeout: float = 20.0) -> None:
        if self.operator is None:
            return
        if self.operator.poll() is None:
            os.killpg(self.operator.pid, signal.SIGTERM)
            try:
                self.operator.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.operator.pid, signal.SIGKILL)
                self.operator.wait()
        self.operator = None

    def operator_alive(self) -> bool:
        return self.operator is not None and self.operator.poll() is None

    def started_pids(self) -> list[int]:
        """Every process (group leader) this cluster started: pods' containers and operator runs."""
        return [*(self._kubelet.started if self._kubelet else []), *self._operator_pids]

    # -- use -------------------------------------------------------------------------------------------
    def apply(self, obj: dict[str, Any]) -> Any:
        obj = json.loads(json.dumps(obj))
        obj["metadata"].setdefault("namespace", self.namespace)
        return self.client.create(obj)

    def compressed_model(self, name: str) -> Any:
        return self.client.get("CompressedModel", self.namespace, name)

    def events(self) -> list[Any]:
        return sorted(
            self.client.list("Event", self.namespace),
            key=lambda e: e["metadata"].get("creationTimestamp") or "",
        )

    def pod_endpoint(self, uid: str, port: str) -> str | None:
        """The loopback address a Service reaches a pod's named (or numbered) port at, while it runs."""
        if self._kubelet is None:
            return None
        host_port = self._kubelet.host_ports(uid).get(port)
        return f"127.0.0.1:{host_port}" if host_port is not None else None

    def service_url(self, name: str, port: int) -> str | None:
        address = self.network.address(name, self.namespace, port)
        return f"http://{address}" if address else None

    def dump(self) -> Path:
        """Every object in the local API, as JSON, to ``objects.json``."""
        objects = self.api.dump()
        self.paths.dump.write_text(json.dumps(objects, indent=1, sort_keys=True))
        return self.paths.dump

    def wait_for(self, what: str, predicate: Any, timeout: float, poll: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(poll)
        raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")


def _ensure(create: Any) -> None:
    """Create an object unless it exists (a restored cluster already has it)."""
    try:
        create()
    except APIError as exc:
        if exc.status != 409:
            raise


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30

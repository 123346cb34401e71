"""The process kubelet: argument rewrites (ports, Service URLs, volumes, termination log), and real
processes: exit codes with termination messages, OOM kills, readiness probes, restarts, SIGTERM."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kondense.localcluster.kubelet import (
    CannotRun,
    Kubelet,
    NodeContext,
    NotReadyToStart,
    parse_quantity,
    plan_container,
    rewrite_path,
    rewrite_ports,
    rewrite_service_urls,
)

pytestmark = pytest.mark.timeout(120)
SERVICES = {("digits-stable", "ml", 8080): "127.0.0.1:40001"}


def context(tmp_path: Path, bin_dirs: tuple[str, ...] | None = None) -> NodeContext:
    return NodeContext(
        pvc_dir=tmp_path / "pvc",
        service_address=lambda svc, ns, port: SERVICES.get((svc, ns, port)),
        namespace_exists=lambda ns: ns in ("ml", "default"),
        bin_dirs=bin_dirs or (str(Path(sys.executable).parent),),
    )


def test_quantities() -> None:
    assert parse_quantity("512Mi") == 512 * 2**20
    assert parse_quantity("1.5G") == 1.5e9
    assert parse_quantity("100m") == pytest.approx(0.1)
    assert parse_quantity(2) == 2.0
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity("12Qi")


def test_ports_follow_declared_container_ports_only() -> None:
    args = [
        "serve",
        "--port",
        "8080",
        "--threads",
        "8080",
        "--metrics-port=8002",
        "--grpc-port=9000",
        "--http-port",
        "8080",
    ]
    assert rewrite_ports(args, {8080: 5001, 8002: 5002}) == [
        "serve", "--port", "5001", "--threads", "8080", "--metrics-port=5002", "--grpc-port=9000", "--http-port", "5001",
    ]  # fmt: skip


def test_service_urls_point_at_the_service_proxies(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    for host in ("digits-stable.ml.svc.cluster.local", "digits-stable.ml.svc", "digits-stable.ml"):
        assert rewrite_service_urls(f"http://{host}:8080/v2", ctx) == "http://127.0.0.1:40001/v2"
    # a host outside the cluster's namespaces is left alone
    assert rewrite_service_urls("http://example.org:8080", ctx) == "http://example.org:8080"
    assert rewrite_service_urls("http://127.0.0.1:9090", ctx) == "http://127.0.0.1:9090"
    with pytest.raises(NotReadyToStart, match="Service ml/digits-canary"):
        rewrite_service_urls("http://digits-canary.ml.svc.cluster.local:8080", ctx)


def test_paths_under_mounts_move_but_the_cluster_directories_stay() -> None:
    mounts = {"/tmp": "/work/pod/tmp", "/models": "/work/pod/models"}
    assert rewrite_path("/models/digits/1", mounts) == "/work/pod/models/digits/1"
    assert rewrite_path("--repository=/models", mounts) == "--repository=/work/pod/models"
    assert rewrite_path("/modelsx", mounts) == "/modelsx"
    assert (
        rewrite_path("/tmp/cluster/pvc/models", mounts, keep=("/tmp/cluster/pvc",))
        == "/tmp/cluster/pvc/models"
    )


def server_pod(tmp_path: Path) -> dict[str, Any]:
    return {
        "metadata": {"name": "digits-canary-1", "namespace": "ml", "uid": "u1"},
        "spec": {
            "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "pvc-0", "persistentVolumeClaim": {"claimName": "models"}}],
            "containers": [
                {
                    "name": "server",
                    "image": "kondense/serving:0.1.0",
                    "command": ["kondense"],
                    "args": ["serve", "--model", "/mnt/pvc/models/digits", "--port", "8080",
                             "--shadow-of", "http://digits-stable.ml.svc.cluster.local:8080"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "env": [{"name": "ROOT", "value": "/mnt/pvc"}, {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "pvc-0", "mountPath": "/mnt/pvc/models"}],
                }
            ],
        },
    }  # fmt: skip


def test_a_server_container_becomes_a_loopback_process_line(tmp_path: Path) -> None:
    pod = server_pod(tmp_path)
    launch = plan_container(
        pod, pod["spec"]["containers"][0], tmp_path / "pod", context(tmp_path), ["--inject-latency-ms", "80"]
    )
    host_port = launch.ports[8080]
    assert launch.argv[0] == str(Path(sys.executable).parent / "kondense")
    assert launch.argv[1:] == [
        "serve", "--model", str(tmp_path / "pvc" / "models" / "digits"), "--port", str(host_port),
        "--shadow-of", "http://127.0.0.1:40001", "--host", "127.0.0.1", "--inject-latency-ms", "80",
    ]  # fmt: skip
    assert launch.named_ports == {"http": 8080}
    assert launch.env["TMPDIR"] == str(tmp_path / "pod" / "volumes" / "tmp")
    assert launch.env["POD"] == "digits-canary-1"
    assert launch.env["ROOT"] == "/mnt/pvc"  # not a mount itself: left as written


def test_commands_that_cannot_run_here_say_why(tmp_path: Path) -> None:
    pod = server_pod(tmp_path)
    container = {**pod["spec"]["containers"][0], "command": ["tritonserver"]}
    with pytest.raises(CannotRun, match='"tritonserver": executable file not found'):
        plan_container(pod, container, tmp_path / "pod", context(tmp_path, ("/nonexistent",)))
    with pytest.raises(CannotRun, match="no command"):
        plan_container(pod, {"name": "x", "image": "y"}, tmp_path / "pod", context(tmp_path))


class RecordingAPI:
    """Stands in for the API client: keeps the statuses the kubelet reports."""

    def __init__(self) -> None:
        self.statuses: dict[str, dict[str, Any]] = {}

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.statuses[name] = status
        return {"status": status}


def python_pod(name: str, code: str, restart: str = "Never", **container: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}"},
        "spec": {
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {"name": "main", "image": "python", "command": [sys.executable, "-c", code], **container}
            ],
        },
    }


def run_until(
    kubelet: Kubelet, api: RecordingAPI, pods: list[dict[str, Any]], done: Any, timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kubelet.sync(pods)
        status = api.statuses.get(pods[0]["metadata"]["name"])
        if status and done(status):
            return status
        time.sleep(0.1)
    raise AssertionError(f"pod never got there: {api.statuses}")


@pytest.fixture
def kubelet(tmp_path: Path) -> Any:
    api = RecordingAPI()
    node = Kubelet(api, tmp_path / "pods", tmp_path / "logs", context(tmp_path))
    yield node, api
    node.shutdown(grace_s=5)


def test_exit_codes_and_termination_messages(kubelet: Any) -> None:
    node, api = kubelet
    code = "import sys; open(sys.argv[1], 'w').write('{\"ok\": false}'); sys.exit(3)"
    pod = python_pod("job-1", code)
    # the container's terminationMessagePath (default /dev/termination-log) becomes a per-pod file
    pod["spec"]["containers"][0]["args"] = ["/dev/termination-log"]
    status = run_until(node, api, [pod], lambda s: s["phase"] == "Failed")
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"], terminated["message"]) == (
        3,
        "Error",
        '{"ok": false}',
    )


def test_logs_are_the_message_when_asked_and_success_is_completed(kubelet: Any) -> None:
    node, api = kubelet
    failing = python_pod("job-2", "print('the reason it broke'); raise SystemExit(2)",
                         terminationMessagePolicy="FallbackToLogsOnError")  # fmt: skip
    status = run_until(node, api, [failing], lambda s: s["phase"] == "Failed")
    assert "the reason it broke" in status["containerStatuses"][0]["state"]["terminated"]["message"]
    ok = python_pod("job-3", "print('fine')")
    status = run_until(node, api, [ok], lambda s: s["phase"] == "Succeeded")
    assert status["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"


def test_memory_over_the_limit_is_oom_killed(kubelet: Any) -> None:
    node, api = kubelet
    hog = python_pod("hog", "import time; x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(30)",
                     resources={"limits": {"memory": "100Mi"}})  # fmt: skip
    status = run_until(node, api, [hog], lambda s: s["phase"] == "Failed")
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137)


def test_readiness_follows_the_http_probe_and_crashes_restart(kubelet: Any, tmp_path: Path) -> None:
    node, api = kubelet
    code = "import sys, http.server as h; h.HTTPServer(('127.0.0.1', int(sys.argv[2])), h.SimpleHTTPRequestHandler).serve_forever()"
    server = python_pod(
        "web",
        code,
        restart="Always",
        args=["--port", "8080"],
        ports=[{"name": "http", "containerPort": 8080}],
        readinessProbe={"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    )
    status = run_until(node, api, [server], lambda s: s["containerStatuses"][0]["ready"])
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    assert node.host_ports("uid-web")["http"] == node.host_ports("uid-web")["8080"] != 8080
    crash = python_pod("crash", "raise SystemExit(1)", restart="Always")
    status = run_until(
        node, api, [crash], lambda s: s["containerStatuses"][0]["restartCount"] >= 2, timeout=20
    )
    assert status["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 1
    assert status["phase"] == "Running"


def test_deleted_pods_get_sigterm_and_nothing_is_left(kubelet: Any) -> None:
    node, api = kubelet
    sleeper = python_pod("sleeper", "import time; time.sleep(60)", restart="Always")
    run_until(node, api, [sleeper], lambda s: s["containerStatuses"][0]["started"])
    pid = node.started[-1]
    node.sync([])  # gone from the API
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        node.sync([])
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]

"""``kondense up``'s parts that need no daemon: the image -> command mapping, the store on disk, the CLI's
answers to bad usage and to `down` when nothing is up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kondense.api.crd import crd
from kondense.cli import build_app
from kondense.localcluster import LocalAPIServer
from kondense.localcluster.client import APIClient
from kondense.localcluster.cluster import IMAGE_ENTRYPOINTS
from kondense.localcluster.kubelet import CannotRun, NodeContext, image_entrypoint, plan_container
from kondense.localcluster.store import StoreError, load, restore, snapshot
from kondense.localcluster.up import alive, down, start_time

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


@pytest.mark.parametrize(
    ("image", "command"),
    [
        ("kondense/operator:0.1.0", ("kondense",)),
        ("kondense/operator", ("kondense",)),
        ("ghcr.io/acme/kondense/compression:1.2@sha256:" + "a" * 64, ("kondense-compress",)),
        ("localhost:5000/kondense/serving:dev", ("kondense",)),
        ("nvcr.io/nvidia/tritonserver:24.08-py3", None),
        ("kondense/other:1", None),
        ("operator:1", None),
        ("", None),
    ],
)
def test_project_images_map_to_their_entrypoints(image: str, command: tuple[str, ...] | None) -> None:
    assert image_entrypoint(image, IMAGE_ENTRYPOINTS) == command


def _ctx(tmp_path: Path, **extra: Any) -> NodeContext:
    return NodeContext(
        pvc_dir=tmp_path / "pvc",
        service_address=lambda svc, ns, port: None,
        namespace_exists=lambda ns: False,
        bin_dirs=(str(Path(sys.executable).parent),),
        image_entrypoints=IMAGE_ENTRYPOINTS,
        **extra,
    )


def test_a_container_without_command_runs_its_images_entrypoint_with_ports_and_credentials(
    tmp_path: Path,
) -> None:
    pod: dict[str, Any] = {"metadata": {"name": "op", "namespace": "kondense", "uid": "u1"}, "spec": {}}
    container = {
        "name": "operator",
        "image": "kondense/operator:0.1.0",
        "args": ["operator", "--namespace=default"],
        "env": [{"name": "KONDENSE_HEALTH_PORT", "value": "8080"}, {"name": "OTHER", "value": "8080"}],
        "ports": [{"name": "health", "containerPort": 8080}],
    }
    ctx = _ctx(tmp_path, in_cluster_env={"KUBECONFIG": "/k/config"})
    launch = plan_container(pod, container, tmp_path / "pod", ctx)
    assert launch.argv == [str(Path(sys.executable).parent / "kondense"), "operator", "--namespace=default"]
    host_port = launch.ports[8080]
    assert launch.env["KONDENSE_HEALTH_PORT"] == str(host_port) != "8080"
    assert launch.env["OTHER"] == "8080"  # only *_PORT variables name a port
    assert launch.env["KUBECONFIG"] == "/k/config"

    pod["spec"] = {"automountServiceAccountToken": False}
    assert "KUBECONFIG" not in plan_container(pod, container, tmp_path / "pod", ctx).env


@pytest.mark.parametrize(
    ("automount", "url"), [(None, "http://prometheus.monitoring:9090"), (False, "http://127.0.0.1:41000")]
)
def test_pods_with_in_cluster_access_keep_service_urls_for_the_proxy(
    tmp_path: Path, automount: bool | None, url: str
) -> None:
    ctx = NodeContext(
        pvc_dir=tmp_path / "pvc",
        service_address=lambda svc, ns, port: (
            "127.0.0.1:41000" if (svc, ns) == ("prometheus", "monitoring") else None
        ),
        namespace_exists=lambda ns: ns == "monitoring",
        bin_dirs=(str(Path(sys.executable).parent),),
        in_cluster_env={"KUBECONFIG": "/k/config", "HTTP_PROXY": "http://127.0.0.1:3128"},
    )
    spec = {} if automount is None else {"automountServiceAccountToken": automount}
    pod = {"metadata": {"name": "p", "namespace": "default", "uid": "u3"}, "spec": spec}
    container = {
        "name": "c",
        "command": ["kondense"],
        "env": [{"name": "URL", "value": "http://prometheus.monitoring:9090"}],
    }
    launch = plan_container(pod, container, tmp_path / "pod", ctx)
    assert launch.env["URL"] == url
    assert ("HTTP_PROXY" in launch.env) is (automount is None)


def test_another_images_entrypoint_cannot_run(tmp_path: Path) -> None:
    pod = {"metadata": {"name": "p", "namespace": "default", "uid": "u2"}, "spec": {}}
    with pytest.raises(CannotRun, match="'busybox:1' is none of those this node runs as local commands"):
        plan_container(pod, {"name": "c", "image": "busybox:1"}, tmp_path / "pod", _ctx(tmp_path))


def test_the_store_comes_back_verbatim_with_custom_resources_and_newer_revisions() -> None:
    with LocalAPIServer() as first:
        client = APIClient(first.url)
        client.create_at(CRDS, crd())
        client.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})
        model = client.create({
            "apiVersion": "kondense.dev/v1alpha1", "kind": "CompressedModel",
            "metadata": {"name": "digits", "namespace": "team"},
            "spec": {"baseModel": {"uri": "pvc://models/m.onnx"}, "task": "classification",
                     "data": {"evaluation": {"uri": "pvc://models/e.npz"}}, "targets": [{"name": "fp16", "technique": "fp16"}]},
        })  # fmt: skip
        client.patch_status("CompressedModel", "team", "digits", {"phase": "Promoted"})
        owned = client.create({
            "apiVersion": "v1", "kind": "Service", "spec": {"ports": [{"port": 80}]},
            "metadata": {"name": "child", "namespace": "team", "ownerReferences": [
                {"apiVersion": "kondense.dev/v1alpha1", "kind": "CompressedModel", "name": "digits", "uid": model["metadata"]["uid"]}]},
        })  # fmt: skip
        client.close()
        state = first.call(snapshot(first.emulator))
    saved_revision = state["revision"]

    with LocalAPIServer() as second:
        assert second.call(restore(second.emulator, state)) >= 4
        client = APIClient(second.url)
        again = client.get("CompressedModel", "team", "digits")
        assert again["metadata"]["uid"] == model["metadata"]["uid"]
        assert again["status"]["phase"] == "Promoted"
        assert client.get("Service", "team", "child")["metadata"]["uid"] == owned["metadata"]["uid"]
        later = client.create(
            {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "new", "namespace": "team"}}
        )
        assert int(later["metadata"]["resourceVersion"]) > saved_revision
        # garbage collection still follows the restored ownerReferences
        assert client.delete("CompressedModel", "team", "digits")
        deadline = time.monotonic() + 10
        while client.get("Service", "team", "child") is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get("Service", "team", "child") is None
        client.close()


def test_a_damaged_snapshot_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert load(path) is None
    path.write_text("{not json")
    with pytest.raises(StoreError, match=r"state\.json: not valid JSON"):
        load(path)


def test_processes_are_recognised_by_pid_and_start_time() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        record = {"pid": proc.pid, "start": start_time(proc.pid)}
        assert alive(record)
        assert not alive({"pid": proc.pid, "start": "1"})  # the same PID, another process
    finally:
        proc.kill()
        proc.wait()
    assert not alive(record)
    assert start_time(os.getpid()) is not None


def test_down_when_not_up_says_so_and_succeeds(tmp_path: Path) -> None:
    assert not down(tmp_path).was_up
    result = CliRunner().invoke(build_app(), ["down", "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "the local cluster is not up in" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["up", "--port", "70000"], "error: --port 70000: not a TCP port (1-65535)"),
        (["up", "--workdir", "{file}"], "not a directory"),
        (["urls", "--workdir", "{dir}"], "the local cluster is not up in"),
    ],
)
def test_bad_usage_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "file").write_text("")
    args = [a.format(file=tmp_path / "file", dir=tmp_path) for a in args]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1

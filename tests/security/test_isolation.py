# mypy: disable-error-code="union-attr, index, attr-defined, arg-type, unused-ignore"
"""Hostile CompressedModels against the real operator code and the local Kubernetes API (issue 11).

One CR author must not be able to reach another's traffic or artifacts: HTTPRoutes are set only in the
CR's own namespace and only when they opt in; images are the operator's unless allow-listed; a spec
that comes back runs into a new directory; a compression Job writes only its own directory.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubernetes import client, config

from kondense.api.artifacts import JobResult, Manifest, sha256_file
from kondense.api.crd import crd
from kondense.localcluster import LocalAPIServer
from kondense.operator.controller import Controller
from kondense.operator.kube import KubeClient
from kondense.operator.naming import CANARY_OF_LABEL, HASH_LABEL, MODEL_LABEL
from kondense.operator.routers import (
    GATEWAY_GROUP,
    GATEWAY_VERSION,
    HTTPROUTES,
    GatewayAPIRouter,
    RouteRefused,
)
from kondense.operator.settings import OperatorSettings
from kondense_testing.builders import DIGITS
from kondense_testing.onnx_models import linear_classifier

NS = "ml"
GROUP, VERSION, PLURAL = "kondense.dev", "v1alpha1", "compressedmodels"
pytestmark = pytest.mark.timeout(120)


class Env:
    def __init__(self, api: LocalAPIServer, kube: KubeClient, settings: OperatorSettings) -> None:
        self.api, self.kube = api, kube
        self.events: list[tuple[str, str]] = []
        self.controller = Controller(
            settings, kube, lambda body, event: self.events.append((event.reason, event.message))
        )
        self.time = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)

    def create_cr(self, spec: dict[str, Any], name: str = "digits") -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "CompressedModel",
            "metadata": {"name": name},
            "spec": spec,
        }
        self.kube.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)

    def set_spec(self, spec: dict[str, Any], name: str = "digits") -> None:
        current = self.kube.get_cmodel(NS, name)
        assert current is not None
        current["spec"] = spec
        self.kube.custom.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name, current)

    def reconcile(self, name: str = "digits") -> dict[str, Any]:
        self.time += timedelta(seconds=3)
        self.controller.reconcile(NS, name, self.time)
        body = self.kube.get_cmodel(NS, name)
        assert body is not None
        return body

    def jobs(self) -> list[dict[str, Any]]:
        return self.kube.list_jobs(NS, f"{MODEL_LABEL}=digits")

    def route(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.kube.get_custom(GATEWAY_GROUP, GATEWAY_VERSION, HTTPROUTES, namespace, name)

    def create_route(self, namespace: str, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        route = {
            "apiVersion": f"{GATEWAY_GROUP}/{GATEWAY_VERSION}",
            "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {
                "parentRefs": [{"name": "gateway"}],
                "rules": [{"backendRefs": [{"name": f"{name}-backend", "port": 80, "weight": 100}]}],
            },
        }
        self.kube.custom.create_namespaced_custom_object(
            GATEWAY_GROUP, GATEWAY_VERSION, namespace, HTTPROUTES, route
        )
        created = self.route(namespace, name)
        assert created is not None
        return created


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with LocalAPIServer() as api:
        api_client = config.new_client_from_config(str(api.write_kubeconfig(tmp_path / "kubeconfig")))
        try:
            client.ApiextensionsV1Api(api_client).create_custom_resource_definition(crd())
            core = client.CoreV1Api(api_client)
            pvc = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
            for namespace in (NS, "payments"):
                core.create_namespace({"metadata": {"name": namespace}})
                core.create_namespaced_persistent_volume_claim(
                    namespace, {"metadata": {"name": "models"}, "spec": pvc}
                )
            yield Env(api, KubeClient(api_client), OperatorSettings(tick_seconds=0.5))
        finally:
            api_client.close()


def digits_spec(**overrides: Any) -> dict[str, Any]:
    spec = copy.deepcopy(DIGITS["spec"])
    spec.update(overrides)
    return spec


def gateway_rollout(route: dict[str, Any]) -> dict[str, Any]:
    rollout = copy.deepcopy(DIGITS["spec"]["rollout"])
    rollout["trafficRouting"] = {"type": "gatewayAPI", "httpRoute": route}
    return rollout


def condition(body: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


# ---- 5. HTTPRoutes: own namespace, opted in --------------------------------------------------------------


def test_a_cr_cannot_name_a_route_in_another_namespace(env: Env) -> None:
    victim = env.create_route("payments", "checkout", labels={CANARY_OF_LABEL: "digits"})
    # the local API does not run CEL: the operator's own parsing must refuse it
    env.create_cr(digits_spec(rollout=gateway_rollout({"name": "checkout", "namespace": "payments"})))
    body = env.reconcile()
    invalid = condition(body, "Invalid")
    assert invalid is not None and invalid["status"] == "True"
    assert "own namespace" in invalid["message"] and "httpRoute.namespace" in invalid["message"]
    assert env.jobs() == []
    assert env.route("payments", "checkout") == victim


def test_a_route_that_does_not_opt_in_is_left_alone(env: Env) -> None:
    shop = env.create_route(NS, "shop")
    env.create_cr(digits_spec(rollout=gateway_rollout({"name": "shop"})))
    body = env.reconcile()
    invalid = condition(body, "Invalid")
    assert invalid is not None and invalid["status"] == "True"
    assert f"label it {CANARY_OF_LABEL}=digits" in invalid["message"]
    assert env.jobs() == []  # no children at all
    assert env.route(NS, "shop") == shop
    # a route given to another CompressedModel is no better
    labelled = copy.deepcopy(shop)
    labelled["metadata"]["labels"] = {CANARY_OF_LABEL: "other"}
    env.kube.patch_custom(
        GATEWAY_GROUP, GATEWAY_VERSION, HTTPROUTES, NS, "shop", {"metadata": labelled["metadata"]}
    )
    assert "'other'" in condition(env.reconcile(), "Invalid")["message"]
    assert env.jobs() == []
    # opting in lets the rollout start
    env.kube.patch_custom(
        GATEWAY_GROUP,
        GATEWAY_VERSION,
        HTTPROUTES,
        NS,
        "shop",
        {"metadata": {"labels": {CANARY_OF_LABEL: "digits"}}},
    )
    body = env.reconcile()
    assert condition(body, "Invalid") is None
    assert len(env.jobs()) == 1 + len(DIGITS["spec"]["targets"])


def test_the_gateway_router_patches_only_an_opted_in_route(env: Env) -> None:
    router = GatewayAPIRouter()
    desired = {
        "kind": "HTTPRoute",
        "metadata": {"name": "shop"},
        "spec": {"rules": [{"backendRefs": [{"name": "digits-stable", "port": 8080, "weight": 75},
                                            {"name": "digits-canary", "port": 8080, "weight": 25}]}]},
    }  # fmt: skip
    before = env.create_route(NS, "shop")
    with pytest.raises(RouteRefused, match="does not opt in"):
        router.apply(env.kube, NS, "digits", desired)
    assert env.route(NS, "shop") == before
    with pytest.raises(RouteRefused, match="does not exist"):
        router.apply(env.kube, NS, "digits", {**desired, "metadata": {"name": "nowhere"}})
    env.create_route(NS, "mine", labels={CANARY_OF_LABEL: "digits"})
    assert router.apply(env.kube, NS, "digits", {**desired, "metadata": {"name": "mine"}}) == "patched"
    mine = env.route(NS, "mine")
    assert mine["spec"]["rules"][0]["backendRefs"] == desired["spec"]["rules"][0]["backendRefs"]
    assert mine["spec"]["parentRefs"] == [{"name": "gateway"}]  # the user's part is untouched
    assert router.apply(env.kube, NS, "digits", {**desired, "metadata": {"name": "mine"}}) == "unchanged"


# ---- 3. images ------------------------------------------------------------------------------------------


def test_an_image_not_on_the_allow_list_creates_nothing(env: Env) -> None:
    compression = {**DIGITS["spec"]["compression"], "image": "attacker.example/compress:latest"}
    env.create_cr(digits_spec(compression=compression))
    body = env.reconcile()
    invalid = condition(body, "Invalid")
    assert invalid is not None and invalid["status"] == "True"
    assert "spec.compression.image" in invalid["message"] and "allow-list" in invalid["message"]
    assert env.jobs() == []


# ---- 4. a new directory per run -------------------------------------------------------------------------


def output_dirs(jobs: list[dict[str, Any]]) -> dict[str, str]:
    out = {}
    for job in jobs:
        (container,) = job["spec"]["template"]["spec"]["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/output"]
        out[job["metadata"]["name"]] = mount["subPath"]
    return out


def test_spec_a_b_a_never_writes_into_the_first_run_s_directory(env: Env) -> None:
    spec_a = digits_spec()
    spec_b = digits_spec(compression={**DIGITS["spec"]["compression"], "backoffLimit": 2})
    env.create_cr(spec_a)
    runs, dirs = [], []
    for spec in (None, spec_b, spec_a):
        if spec is not None:
            env.set_spec(spec)
        body = env.reconcile()
        run = body["status"]["hashes"]["run"]
        jobs = [j for j in env.jobs() if not j["metadata"].get("deletionTimestamp")]
        assert jobs and {j["metadata"]["labels"][HASH_LABEL] for j in jobs} == {run}
        runs.append(run)
        dirs.append(set(output_dirs(jobs).values()))
        # a second tick of the same run finds its Jobs again and creates nothing new
        env.reconcile()
        assert {j["metadata"]["name"] for j in env.jobs() if not j["metadata"].get("deletionTimestamp")} == {
            j["metadata"]["name"] for j in jobs
        }
    assert len(set(runs)) == 3
    assert dirs[0].isdisjoint(dirs[2]) and dirs[0].isdisjoint(dirs[1])
    assert all(f"/{runs[0]}/" in d for d in dirs[0]) and all(f"/{runs[2]}/" in d for d in dirs[2])


# ---- 3. the Job writes where it is told, records the URI it is given --------------------------------------


def test_the_job_writes_into_its_output_dir_and_records_the_operator_s_uri(tmp_path: Path) -> None:
    model = linear_classifier(tmp_path / "in" / "model.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "in" / "eval.npz", x=rng.normal(size=(40, 64)).astype(np.float32),
             labels=rng.integers(0, 10, size=40))  # fmt: skip
    mounted = tmp_path / "output"  # what the kubelet mounts at /output (the Job's own directory)
    mounted.mkdir()
    log = tmp_path / "termination-log"
    uri = "pvc://models/digits/kondense/ml/digits/0123456789ab/base/artifact"
    result = subprocess.run(
        [sys.executable, "-m", "kondense.compression.job", "--baseline", "--model", model.as_uri(),
         "--eval", (tmp_path / "in" / "eval.npz").as_uri(), "--output", uri,
         "--output-dir", str(mounted / "artifact"), "--termination-log", str(log), "--latency-runs", "10"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    job = JobResult.model_validate_json(log.read_text())
    assert job.ok and job.artifact is not None
    assert job.artifact.sha256 == sha256_file(mounted / "artifact" / "model.onnx")
    manifest = Manifest.model_validate_json((mounted / "artifact" / "manifest.json").read_text())
    assert manifest.artifact.uri == f"{uri}/model.onnx"
    # nothing was written outside the mounted directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "output", "termination-log"]
    assert [p.name for p in mounted.iterdir()] == ["artifact"]


# ---- the local cluster's kubelet honours subPath and readOnly (the demo runs the Jobs above) -----------


class RecordingAPI:
    def __init__(self) -> None:
        self.statuses: dict[str, dict[str, Any]] = {}

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.statuses[name] = status
        return {"status": status}


WRITER = """
import json, os, sys
out = {}
for path in sys.argv[1:]:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write("x")
        out[path] = "wrote"
    except OSError as exc:
        out[path] = exc.strerror
print(json.dumps(out))
"""


def test_the_local_kubelet_lets_a_job_write_only_its_own_directory(tmp_path: Path) -> None:
    from kondense.localcluster.kubelet import CannotRun, Kubelet, NodeContext, landlock_abi, plan_container

    pvc = tmp_path / "pvc"
    (pvc / "models" / "digits").mkdir(parents=True)
    (pvc / "models" / "digits" / "model.onnx").write_text("the base model")
    pod = {
        "metadata": {"name": "compress", "namespace": NS, "uid": "uid-compress"},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "output", "persistentVolumeClaim": {"claimName": "models", "readOnly": False}}],
            "containers": [{
                "name": "main", "image": "kondense/compression", "command": [sys.executable, "-c", WRITER],
                "args": ["/output/artifact/model.onnx", f"{pvc}/models/digits/model.onnx",
                         f"{pvc}/models/digits/kondense/other/model.onnx"],
                "volumeMounts": [
                    {"name": "output", "mountPath": str(pvc / "models"), "readOnly": True},
                    {"name": "output", "mountPath": "/output", "subPath": "digits/kondense/run1/int8"},
                ],
            }],
        },
    }  # fmt: skip
    ctx = NodeContext(pvc_dir=pvc, service_address=lambda *a: None, namespace_exists=lambda ns: True)
    launch = plan_container(pod, pod["spec"]["containers"][0], tmp_path / "pods" / "compress", ctx)
    job_dir = str(pvc / "models" / "digits" / "kondense" / "run1" / "int8")
    assert launch.argv[3] == f"{job_dir}/artifact/model.onnx"  # the subPath, mapped to the claim's directory
    assert job_dir in launch.writable and str(pvc / "models") not in launch.writable
    climbing = copy.deepcopy(pod)
    climbing["spec"]["containers"][0]["volumeMounts"][1]["subPath"] = "digits/../../etc"
    with pytest.raises(
        CannotRun, match=r"subPath 'digits/\.\./\.\./etc' must be a relative path without '\.\.'"
    ):
        plan_container(climbing, climbing["spec"]["containers"][0], tmp_path / "pods" / "x", ctx)

    if landlock_abi() < 2:
        pytest.skip("this kernel has no Landlock ABI 2: the local kubelet cannot enforce readOnly here")
    api = RecordingAPI()
    kubelet = Kubelet(api, tmp_path / "pods", tmp_path / "logs", ctx)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and api.statuses.get("compress", {}).get("phase") not in (
            "Succeeded",
            "Failed",
        ):
            kubelet.sync([pod])
            time.sleep(0.1)
    finally:
        kubelet.shutdown(grace_s=5)
    assert api.statuses["compress"]["phase"] == "Succeeded", api.statuses
    output = (tmp_path / "logs" / f"{NS}_compress_main.log").read_text()
    results = json.loads(output.strip().splitlines()[-1])
    assert results == {
        f"{job_dir}/artifact/model.onnx": "wrote",
        f"{pvc}/models/digits/model.onnx": "Permission denied",  # the base model beside it: read-only
        f"{pvc}/models/digits/kondense/other/model.onnx": "Permission denied",
    }
    assert (pvc / "models" / "digits" / "model.onnx").read_text() == "the base model"

"""The real kubectl (v1.35, ``make tools``) used as a new user would, against the local API server.

Each test drives the kubectl binary with a kubeconfig for a fresh in-process API server (and its own
``HOME``, so no discovery or OpenAPI cache is shared): version and discovery without warnings, ``apply``
(client- and server-side) with the server's field validation, ``get`` printing the CRD's and the built-in
columns (also while watching), ``describe`` with Events, ``delete`` cascading to the children, ``logs`` of
a pod the process kubelet ran, ``explain``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from kondense.api.crd import crd
from kondense.api.resource import GROUP, PLURAL, VERSION
from kondense.localcluster import LocalAPIServer
from kondense.localcluster.client import APIClient
from kondense.localcluster.kubelet import Kubelet, NodeContext
from kondense_testing.paths import EXAMPLES, REPO
from kondense_testing.tools import find_tool

pytestmark = pytest.mark.timeout(180)
EXAMPLE = EXAMPLES / "digits" / "compressedmodel.yaml"
STATUS = {
    "phase": "Canary",
    "message": "canary int8 at 25%",
    "selectedVariant": "int8",
    "canary": {"variant": "int8", "step": 0, "weight": 25, "requestedWeight": 25, "p99Ms": 3.5,
               "accuracyDelta": 0.001},
}  # fmt: skip


class Kubectl:
    """The kubectl binary with one kubeconfig and a private HOME (its discovery and OpenAPI caches)."""

    def __init__(self, kubeconfig: Path, home: Path) -> None:
        self.binary = find_tool("kubectl")
        self.env = {"KUBECONFIG": str(kubeconfig), "HOME": str(home), "PATH": "/usr/bin:/bin"}

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def raw(self, *args: str) -> bytes:
        """stdout bytes as sent (text mode would turn a progress bar's carriage returns into newlines)."""
        done = subprocess.run(
            [self.binary, *args], env=self.env, capture_output=True, timeout=60, check=False
        )
        assert done.returncode == 0 and not done.stderr, done.stderr
        return done.stdout

    def ok(self, *args: str, stdin: str | None = None) -> str:
        """stdout of a command that must succeed and warn of nothing."""
        done = self(*args, stdin=stdin)
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        assert "warning" not in done.stderr.lower(), f"kubectl {' '.join(args)}: {done.stderr}"
        return done.stdout


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path) -> Kubectl:
    home = tmp_path / "home"
    home.mkdir()
    return Kubectl(kubeconfig, home)


@pytest.fixture
def with_crd(api_client: kubernetes.client.ApiClient) -> None:
    kubernetes.client.ApiextensionsV1Api(api_client).create_custom_resource_definition(crd())  # type: ignore[arg-type]


def header(table: str) -> list[str]:
    return table.splitlines()[0].split()


def rows(table: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in table.splitlines()[1:] if line.strip()}


def owned_by(owner: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def children(owner: dict[str, Any]) -> list[dict[str, Any]]:
    """A Job, a Deployment, a Service and a Pod of the model, as the operator would own them."""
    refs = owned_by(owner)
    template = {"metadata": {"labels": {"app": "digits"}},
                "spec": {"containers": [{"name": "server", "image": "kondense/serving:dev"}]}}  # fmt: skip
    return [
        {"apiVersion": "batch/v1", "kind": "Job",
         "metadata": {"name": "digits-int8", "namespace": "default", "ownerReferences": refs},
         "spec": {"template": {"spec": {"restartPolicy": "Never",
                                        "containers": [{"name": "compress", "image": "kondense/compression:dev"}]}}}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "digits-stable", "namespace": "default", "ownerReferences": refs},
         "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "digits"}}, "template": template}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "digits", "namespace": "default", "ownerReferences": refs},
         "spec": {"selector": {"app": "digits"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "digits-stable-1", "namespace": "default", "labels": {"app": "digits"},
                      "ownerReferences": refs},
         "spec": template["spec"]},
    ]  # fmt: skip


def test_version_and_discovery_carry_no_warnings(kubectl: Kubectl, with_crd: None) -> None:
    version = kubectl.ok("version")
    assert "Server Version: v1.35." in version
    resources = kubectl.ok("api-resources")
    line = next(row for row in resources.splitlines() if row.startswith("compressedmodels "))
    assert line.split()[1:3] == ["cmodel,cmodels", "kondense.dev/v1alpha1"]
    assert "compressedmodels/status" not in resources  # subresources are no resources of their own
    found = kubectl("get", "cmodel")  # the short name resolves without "could also match" warnings
    assert found.returncode == 0 and found.stderr.strip() == "No resources found in default namespace."
    assert kubectl.ok("get", "--raw", "/apis/kondense.dev/v1alpha1").count('"compressedmodels/status"') == 1


def test_apply_then_get_prints_the_printer_columns(kubectl: Kubectl, with_crd: None, custom: Any) -> None:
    assert kubectl.ok("apply", "-f", str(EXAMPLE)).strip() == "compressedmodel.kondense.dev/digits created"
    assert kubectl.ok("apply", "-f", str(EXAMPLE)).strip() == "compressedmodel.kondense.dev/digits unchanged"
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", PLURAL, "digits", {"status": STATUS}
    )
    table = kubectl.ok("get", "cmodel")
    assert header(table) == ["NAME", "PHASE", "VARIANT", "WEIGHT", "P99", "ACCDELTA", "AGE"]
    assert rows(table)["digits"][:6] == ["digits", "Canary", "int8", "25", "3.5", "0.001"]
    assert kubectl.ok("get", "cmodel", "digits", "-o", "jsonpath={.status.phase}") == "Canary"
    as_yaml = yaml.safe_load(kubectl.ok("get", "compressedmodels", "digits", "-o", "yaml"))
    assert as_yaml["spec"]["selection"]["prefer"] == "smallest" and "managedFields" not in as_yaml["metadata"]
    # a change to the file is applied as a merge patch of the custom resource
    changed = EXAMPLE.read_text().replace("prefer: smallest", "prefer: fastest")
    assert (
        kubectl.ok("apply", "-f", "-", stdin=changed).strip()
        == "compressedmodel.kondense.dev/digits configured"
    )
    assert kubectl.ok("get", "cmodel", "digits", "-o", "jsonpath={.spec.selection.prefer}") == "fastest"


def test_get_watch_streams_rows_as_the_status_changes(kubectl: Kubectl, with_crd: None, custom: Any) -> None:
    kubectl.ok("apply", "-f", str(EXAMPLE))
    watch = subprocess.Popen(
        [kubectl.binary, "get", "cmodel", "-w"],
        env=kubectl.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        assert header(watch.stdout.readline()) == [
            "NAME",
            "PHASE",
            "VARIANT",
            "WEIGHT",
            "P99",
            "ACCDELTA",
            "AGE",
        ]
        assert watch.stdout.readline().split()[0] == "digits"
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, "default", PLURAL, "digits", {"status": {**STATUS, "phase": "Promoted"}}
        )
        assert watch.stdout.readline().split()[:3] == ["digits", "Promoted", "int8"]  # blocks until printed
    finally:
        watch.terminate()
        _, errors = watch.communicate(timeout=30)
    assert "error" not in errors.lower() and "warning" not in errors.lower(), errors


def test_unknown_fields_and_schema_violations_are_refused_like_a_real_server(
    kubectl: Kubectl, with_crd: None
) -> None:
    unknown = EXAMPLE.read_text().replace("task: classification", "task: classification\n  foo: 1")
    refused = kubectl("apply", "-f", "-", stdin=unknown)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        'Error from server (BadRequest): error when creating "STDIN": CompressedModel in version "v1alpha1" '
        'cannot be handled as a CompressedModel: strict decoding error: unknown field "spec.foo"'
    )
    server_side = kubectl("apply", "--server-side", "-f", "-", stdin=unknown)
    assert server_side.returncode == 1
    assert ".spec.foo: field not declared in schema" in server_side.stderr
    invalid = (
        EXAMPLE.read_text()
        .replace("prefer: smallest", "prefer: biggest")
        .replace("maxAccuracyDelta: 0.01", "maxAccuracyDelta: lots")
    )
    rejected = kubectl("apply", "-f", "-", stdin=invalid)
    assert rejected.returncode == 1
    assert rejected.stderr.splitlines() == [
        'The CompressedModel "digits" is invalid: ',
        '* spec.selection.maxAccuracyDelta: Invalid value: "string": spec.selection.maxAccuracyDelta in body '
        'must be of type number: "lots"',
        '* spec.selection.prefer: Unsupported value: "biggest": supported values: "smallest", "fastest", "pareto"',
    ]
    assert kubectl("get", "cmodel").stderr.strip() == "No resources found in default namespace."
    # without --validate=strict the unknown field is pruned and reported as a warning
    warned = kubectl("apply", "--validate=warn", "-f", "-", stdin=unknown)
    assert warned.returncode == 0 and 'Warning: unknown field "spec.foo"' in warned.stderr
    assert kubectl.ok("get", "cmodel", "digits", "-o", "jsonpath={.spec.foo}") == ""


def test_server_side_apply_owns_and_removes_its_fields(kubectl: Kubectl, with_crd: None) -> None:
    applied = kubectl.ok("apply", "--server-side", "-f", str(EXAMPLE))
    assert applied.strip() == "compressedmodel.kondense.dev/digits serverside-applied"
    shown = yaml.safe_load(kubectl.ok("get", "cmodel", "digits", "-o", "yaml", "--show-managed-fields"))
    (managed,) = shown["metadata"]["managedFields"]
    assert (managed["manager"], managed["operation"]) == ("kubectl", "Apply")
    assert "f:prefer" in managed["fieldsV1"]["f:spec"]["f:selection"]
    # a field dropped from the applied file is removed (and defaulted again, as the CRD says)
    without = EXAMPLE.read_text().replace("    training: {uri: pvc://models/digits/train.npz}\n", "")
    assert "training" not in without
    kubectl.ok("apply", "--server-side", "-f", "-", stdin=without)
    assert kubectl.ok("get", "cmodel", "digits", "-o", "jsonpath={.spec.data.training}") == ""
    # the CRD itself goes in the same way (a built-in kind, checked against its official schema)
    assert "serverside-applied" in kubectl.ok("apply", "--server-side", "-f", str(REPO / "crds"))


def test_get_builtin_kinds_prints_their_columns(
    kubectl: Kubectl, with_crd: None, custom: Any, api_server: LocalAPIServer
) -> None:
    model = kubectl.ok("apply", "-f", str(EXAMPLE), "-o", "yaml")
    client = APIClient(api_server.url)
    try:
        for child in children(yaml.safe_load(model)):
            client.create(child)
        client.patch_status(
            "Job", "default", "digits-int8", {"startTime": "2026-12-02T08:00:00Z", "active": 1}
        )
        client.patch_status("Deployment", "default", "digits-stable", {"replicas": 2, "readyReplicas": 1,
                                                                       "updatedReplicas": 2, "availableReplicas": 1})  # fmt: skip
        client.patch_status("Pod", "default", "digits-stable-1", {
            "phase": "Running", "podIP": "127.0.0.1",
            "containerStatuses": [{"name": "server", "image": "kondense/serving:dev", "imageID": "", "ready": True,
                                   "restartCount": 2, "started": True,
                                   "state": {"running": {"startedAt": "2026-12-02T08:00:00Z"}}}],
        })  # fmt: skip
    finally:
        client.close()
    out = kubectl.ok("get", "jobs,deployments,pods,svc")
    tables = out.split("\n\n")
    assert header(tables[0]) == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
    assert rows(tables[0])["job.batch/digits-int8"][1:3] == ["Running", "0/1"]
    assert header(tables[1]) == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert rows(tables[1])["deployment.apps/digits-stable"][1:4] == ["1/2", "2", "1"]
    assert header(tables[2]) == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert rows(tables[2])["pod/digits-stable-1"][1:4] == ["1/1", "Running", "2"]
    assert header(tables[3]) == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert rows(tables[3])["service/digits"][1:5] == ["ClusterIP", "<none>", "<none>", "80/TCP"]
    # the Job got the selector the API server gives Jobs (what `kubectl logs job/...` finds pods by)
    selector = kubectl.ok("get", "job", "digits-int8", "-o", "jsonpath={.spec.selector.matchLabels}")
    assert "batch.kubernetes.io/controller-uid" in selector
    wide = kubectl.ok("get", "deploy", "-o", "wide")
    assert header(wide)[-3:] == ["CONTAINERS", "IMAGES", "SELECTOR"] and "app=digits" in wide
    # a built-in kind applied client-side twice: the second apply is a strategic merge patch
    configmap = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {a: '1', b: '2'}\n"
    kubectl.ok("apply", "-f", "-", stdin=configmap)
    assert "configured" in kubectl.ok("apply", "-f", "-", stdin=configmap.replace("b: '2'", "c: '3'"))
    assert kubectl.ok("get", "cm", "cfg", "-o", "jsonpath={.data}") == '{"a":"1","c":"3"}'


def test_describe_shows_the_events_of_the_model(kubectl: Kubectl, with_crd: None, core: Any) -> None:
    model = yaml.safe_load(kubectl.ok("apply", "-f", str(EXAMPLE), "-o", "yaml"))
    involved = {"apiVersion": model["apiVersion"], "kind": "CompressedModel", "name": "digits",
                "namespace": "default", "uid": model["metadata"]["uid"]}  # fmt: skip
    for index, (reason, message) in enumerate(
        [("Compressing", "compressing 4 variants"), ("CanaryStarted", "canary int8 at 25%")]
    ):
        core.create_namespaced_event("default", {
            "apiVersion": "v1", "kind": "Event", "metadata": {"name": f"digits.{index}", "namespace": "default"},
            "involvedObject": involved, "reason": reason, "message": message, "type": "Normal", "count": 1,
            "firstTimestamp": "2026-12-02T08:00:00Z", "lastTimestamp": "2026-12-02T08:00:00Z",
            "source": {"component": "kondense"},
        })  # fmt: skip
    # an event of another object with the same name is not shown
    core.create_namespaced_event("default", {
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": "other", "namespace": "default"},
        "involvedObject": {**involved, "kind": "Job", "apiVersion": "batch/v1", "uid": "x"},
        "reason": "Completed", "message": "the job of another", "type": "Normal",
    })  # fmt: skip
    described = kubectl.ok("describe", "cmodel", "digits")
    events = described[described.index("Events:") :]
    assert "Compressing" in events and "compressing 4 variants" in events
    assert "CanaryStarted" in events and "the job of another" not in events
    listed = kubectl.ok("get", "events", "--field-selector", "involvedObject.kind=CompressedModel")
    assert header(listed) == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert "compressedmodel/digits" in listed and "the job of another" not in listed


@pytest.mark.parametrize("cascade", ["background", "foreground"])
def test_delete_removes_the_children(
    kubectl: Kubectl, with_crd: None, api_server: LocalAPIServer, cascade: str
) -> None:
    model = yaml.safe_load(kubectl.ok("apply", "-f", str(EXAMPLE), "-o", "yaml"))
    client = APIClient(api_server.url)
    try:
        for child in children(model):
            client.create(child)
    finally:
        client.close()
    listed = kubectl.ok("get", "jobs,deployments,pods,svc", "-o", "name").split()
    assert listed == [
        "job.batch/digits-int8",
        "deployment.apps/digits-stable",
        "pod/digits-stable-1",
        "service/digits",
    ]
    deleted = kubectl.ok("delete", "cmodel", "digits", f"--cascade={cascade}")  # waits until it is gone
    assert deleted.strip() == 'compressedmodel.kondense.dev "digits" deleted from default namespace'
    gone = kubectl("get", "cmodel,jobs,deployments,pods,svc")
    assert gone.returncode == 0 and gone.stdout == ""
    assert gone.stderr.strip() == "No resources found in default namespace."


def test_explain_reads_the_crd_schema(kubectl: Kubectl, with_crd: None) -> None:
    explained = kubectl.ok("explain", "cmodel.spec.selection")
    assert "KIND:       CompressedModel" in explained and "prefer\t<string>" in explained
    assert "enum: smallest, fastest, pareto" in explained
    assert "FIELDS:" in kubectl.ok("explain", "deployment.spec.strategy")


def test_logs_are_the_output_of_the_pod_process(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    code = (
        "import sys, time\nfor i in range(3): print(f'step {i}', flush=True)\ntime.sleep(1)\n"
        "print('50%', end='\\r'); print('100%')\nprint('done')"
    )
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "printer", "namespace": "default"},
           "spec": {"restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "python", "command": [sys.executable, "-c", code]}]}}  # fmt: skip
    with LocalAPIServer(pod_logs_dir=logs) as api:
        kubectl = Kubectl(api.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path)
        client = APIClient(api.url)
        context = NodeContext(
            pvc_dir=tmp_path / "pvc",
            service_address=lambda *_: None,
            namespace_exists=lambda ns: ns == "default",
            bin_dirs=(str(Path(sys.executable).parent),),
        )
        kubelet = Kubelet(client, tmp_path / "pods", logs, context)
        try:
            client.create(pod)
            follow = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                kubelet.sync(client.list("Pod", "default"))
                phase = client.get("Pod", "default", "printer")["status"].get("phase")
                if follow is None and phase == "Running":
                    follow = subprocess.Popen(
                        [kubectl.binary, "logs", "-f", "printer"],
                        env=kubectl.env,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                if phase == "Succeeded":
                    break
                time.sleep(0.1)
            assert phase == "Succeeded"
            assert kubectl.raw("logs", "printer") == b"step 0\nstep 1\nstep 2\n50%\r100%\ndone\n"
            assert kubectl.raw("logs", "printer", "--tail=1") == b"done\n"
            # a progress bar's carriage returns end no line
            assert kubectl.raw("logs", "pod/printer", "-c", "main", "--tail=2") == b"50%\r100%\ndone\n"
            assert follow is not None
            followed, _ = follow.communicate(timeout=30)  # ends with the pod
            assert followed.endswith("done\n") and "step 2\n" in followed
            missing = kubectl("logs", "printer", "-c", "sidecar")
            assert (
                missing.returncode == 1 and "container sidecar is not valid for pod printer" in missing.stderr
            )
        finally:
            kubelet.shutdown(grace_s=5)
            client.close()


def test_names_must_be_dns_subdomains(kubectl: Kubectl, with_crd: None) -> None:
    refused = kubectl("apply", "-f", "-", stdin=EXAMPLE.read_text().replace("name: digits", "name: My_Model"))
    assert refused.returncode == 1
    assert refused.stderr.startswith(
        'The CompressedModel "My_Model" is invalid: metadata.name: Invalid value: "My_Model": '
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters"
    )

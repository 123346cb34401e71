"""A real kopf operator process against the local API server, logged in through the written kubeconfig.

The operator (``configmap_operator.py``) reacts to a CompressedModel by creating an owned ConfigMap,
posting an Event and patching the status subresource; deleting the CompressedModel runs its deletion
handler behind kopf's finalizer, and then garbage-collects the ConfigMap. Everything is observed with the official client, as a user with kubectl would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiException

from kondense.api.crd import crd
from kondense_testing.paths import EXAMPLES

GROUP, VERSION, PLURAL = "kondense.dev", "v1alpha1", "compressedmodels"
OPERATOR = Path(__file__).with_name("configmap_operator.py")
T = TypeVar("T")


def api(api_class: type[Any], client: kubernetes.client.ApiClient | None = None) -> Any:
    """An API object of the official client, typed Any: we send dict bodies, as operators do, which the
    client accepts at runtime but its pydantic-typed signatures (V1ConfigMap, ...) do not declare."""
    return api_class(client) if client is not None else api_class()


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    """Poll until ``probe`` returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def operator_process(kubeconfig: Path, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """`kopf run` as its own process (standalone: no peering), stopped with SIGINT like a pod."""
    log_path = tmp_path / "operator.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kopf",
                "run",
                "--standalone",
                "--all-namespaces",
                "--verbose",
                str(OPERATOR),
            ],
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield log_path.read_text
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"kopf did not stop on SIGINT:\n{log_path.read_text()[-4000:]}") from None


def read_or_none(read: Callable[[], T]) -> T | None:
    try:
        return read()
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_kopf_operator_reconciles_and_its_children_are_collected(
    api_client: kubernetes.client.ApiClient,
    core: Any,
    custom: Any,
    operator_process: Callable[[], str],
) -> None:
    api(kubernetes.client.ApiextensionsV1Api, api_client).create_custom_resource_definition(crd())
    eventually(
        lambda: "Starting the watch-stream for compressedmodels" in operator_process(), "kopf to watch"
    )

    model: dict[str, Any] = yaml.safe_load((EXAMPLES / "digits" / "compressedmodel.yaml").read_text())
    created = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, model)
    uid = created["metadata"]["uid"]

    def summary() -> kubernetes.client.V1ConfigMap | None:
        return read_or_none(lambda: core.read_namespaced_config_map("digits-summary", "default"))

    try:
        configmap: Any = eventually(summary, "the operator's ConfigMap")
        assert configmap.data == {"targets": "int8,dynamic-int8,fp16,slim-int8"}
        [owner] = configmap.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid) == ("CompressedModel", "digits", uid)

        def status() -> dict[str, Any] | None:
            body = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "digits")
            return body.get("status")

        assert eventually(status, "the status patch") == {
            "phase": "Compressing",
            "message": "summary of 4 targets in ConfigMap digits-summary",
        }
        events = eventually(
            lambda: core.list_namespaced_event("default", field_selector="involvedObject.name=digits").items,
            "kopf's event",
        )
        assert [(event.reason, event.involved_object.uid) for event in events] == [("Summarized", uid)]

        finalizers = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "digits")[
            "metadata"
        ]
        assert finalizers["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]  # for the delete handler

        custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "digits")
        eventually(lambda: summary() is None, "the ConfigMap to be garbage-collected")
        assert (
            read_or_none(
                lambda: custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "digits")
            )
            is None
        )
        reasons = sorted(
            event.reason for event in core.list_namespaced_event("default").items
        )  # listed by name
        assert reasons == ["Forgotten", "Summarized"]
        assert "Traceback" not in operator_process()
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n--- operator log ---\n{operator_process()[-6000:]}") from failure

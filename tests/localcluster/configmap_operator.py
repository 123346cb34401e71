"""A tiny real kopf operator for the local API tests (run with ``kopf run --standalone -A``).

On create of a CompressedModel it creates an owned ConfigMap with the official client, posts an Event
and writes ``status.phase``/``status.message`` through kopf's patch (the status subresource); on delete
it posts another Event before kopf removes its finalizer. The
settings are the ones an operator needs against the emulator: progress in annotations (status fields
outside the CRD schema are pruned, as on a real cluster) and short watch timeouts so streams reconnect
quickly.
"""

from __future__ import annotations

from typing import Any

import kopf
import kubernetes


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="test.kondense.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="test.kondense.dev")
    settings.watching.server_timeout = 10
    settings.watching.client_timeout = 15
    settings.watching.connect_timeout = 5


@kopf.on.create("kondense.dev", "v1alpha1", "compressedmodels")  # type: ignore[arg-type]  # kopf's protocol lists every kwarg
def summarize(
    body: kopf.Body, spec: kopf.Spec, name: str, namespace: str, patch: kopf.Patch, **_: Any
) -> None:
    targets = [target["name"] for target in spec.get("targets", [])]
    configmap: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-summary", "labels": {"app.kubernetes.io/managed-by": "test-operator"}},
        "data": {"targets": ",".join(targets)},
    }
    kopf.adopt(configmap, owner=body)  # ownerReference to the CompressedModel, and its namespace
    core: Any = kubernetes.client.CoreV1Api()  # Any: a dict body, which the typed signature does not declare
    core.create_namespaced_config_map(namespace, configmap)
    kopf.info(body, reason="Summarized", message=f"ConfigMap {name}-summary lists {len(targets)} targets")
    patch.status["phase"] = "Compressing"
    patch.status["message"] = f"summary of {len(targets)} targets in ConfigMap {name}-summary"


@kopf.on.delete("kondense.dev", "v1alpha1", "compressedmodels")
def forget(body: kopf.Body, **_: Any) -> None:
    # A deletion handler makes kopf hold the object with its finalizer, then release it with a JSON
    # patch guarded by a resourceVersion "test" op: the path real operators take on deletion.
    kopf.info(body, reason="Forgotten", message="the summary goes with its owner")

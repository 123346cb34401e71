"""Thin Kubernetes access for the operator's shell, through the official client."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kondense.api.resource import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)
MERGE_PATCH = "application/merge-patch+json"


class StatusConflict(RuntimeError):
    """The object changed since it was read (resourceVersion precondition failed)."""


class ChildRejected(RuntimeError):
    """The API server refused a write of one of our child objects with a 4xx: retrying the same
    request cannot help, so the shell reports it on the CompressedModel instead of looping."""

    def __init__(self, kind: str, namespace: str, name: str, code: int, reason: str, message: str) -> None:
        self.kind, self.namespace, self.name = kind, namespace, name
        self.code, self.reason, self.api_message = code, reason, message
        super().__init__(f"{kind} {namespace}/{name}: {code} {reason}: {message}")


# 4xx that say nothing about the request itself: a conflict is retried on the next tick, throttling
# waits; everything else (400, 403, 404 on a route we must patch, 413, 422, ...) is a rejection.
_RETRYABLE = {409, 429}


def rejection(exc: ApiException, kind: str, namespace: str, name: str) -> ChildRejected | None:
    """The ChildRejected for a 4xx ApiException (None for 5xx, conflicts and throttling)."""
    code = exc.status or 0
    if not 400 <= code < 500 or code in _RETRYABLE:
        return None
    reason, message = exc.reason or "", ""
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        body = {}
    if isinstance(body, dict):
        reason = str(body.get("reason") or reason)
        message = str(body.get("message") or "")
    return ChildRejected(kind, namespace, name, code, reason[:64], message[:1000])


@contextlib.contextmanager
def _rejecting(kind: str, namespace: str, name: str) -> Iterator[None]:
    """Turn a 4xx ApiException on this child into ChildRejected."""
    try:
        yield
    except ApiException as exc:
        rejected = rejection(exc, kind, namespace, name)
        if rejected is None:
            raise
        raise rejected from exc


def _raw(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Call an API method and return the JSON as plain dicts: building the client's typed models
    for every read costs more CPU and memory than the reconcile itself."""
    response = call(*args, _preload_content=False, **kwargs)
    return json.loads(response.data)


def _subset_differs(desired: Any, actual: Any) -> bool:
    """True when something we set is not what the server has (server-added fields are ignored)."""
    if isinstance(desired, dict):
        if not isinstance(actual, dict):
            return True
        return any(_subset_differs(v, actual.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(desired) != len(actual):
            return True
        return any(_subset_differs(d, a) for d, a in zip(desired, actual, strict=True))
    if isinstance(desired, int | float) and isinstance(actual, int | float) and not isinstance(desired, bool):
        return desired != actual
    return desired != actual and str(desired) != str(actual)


class KubeClient:
    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api = api_client or client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.autoscaling = client.AutoscalingV2Api(self.api)

    # -- generic by kind ------------------------------------------------------------------------
    def _ops(self, kind: str) -> tuple[Any, Any, Any, Any]:
        if kind == "Deployment":
            a = self.apps
            return (a.read_namespaced_deployment, a.create_namespaced_deployment,
                    a.patch_namespaced_deployment, a.delete_namespaced_deployment)  # fmt: skip
        if kind == "Service":
            c = self.core
            return (c.read_namespaced_service, c.create_namespaced_service,
                    c.patch_namespaced_service, c.delete_namespaced_service)  # fmt: skip
        if kind == "ConfigMap":
            c = self.core
            return (c.read_namespaced_config_map, c.create_namespaced_config_map,
                    c.patch_namespaced_config_map, c.delete_namespaced_config_map)  # fmt: skip
        if kind == "Job":
            b = self.batch
            return (b.read_namespaced_job, b.create_namespaced_job,
                    b.patch_namespaced_job, b.delete_namespaced_job)  # fmt: skip
        if kind == "HorizontalPodAutoscaler":
            h = self.autoscaling
            return (h.read_namespaced_horizontal_pod_autoscaler, h.create_namespaced_horizontal_pod_autoscaler,
                    h.patch_namespaced_horizontal_pod_autoscaler,
                    h.delete_namespaced_horizontal_pod_autoscaler)  # fmt: skip
        raise ValueError(f"unsupported kind {kind}")

    def apply(self, obj: dict[str, Any]) -> str:
        """Create, or merge-patch when what we own differs. Returns created|patched|unchanged|gone.
        Raises ChildRejected when the API server refuses the object with a 4xx."""
        meta = obj["metadata"]
        with _rejecting(obj["kind"], meta.get("namespace", ""), meta.get("name", "")):
            return self._apply(obj)

    def _apply(self, obj: dict[str, Any]) -> str:
        kind, meta = obj["kind"], obj["metadata"]
        if kind == "Job":  # a Job's template is immutable: create it once, leave it alone
            return "created" if self.create(obj) else "unchanged"
        read, create, patch, _ = self._ops(kind)
        try:
            current = _raw(read, meta["name"], meta["namespace"])
        except ApiException as exc:
            if exc.status != 404:
                raise
            try:
                create(meta["namespace"], obj, _preload_content=False)  # raw: no typed model to build
                return "created"
            except ApiException as exc2:
                if exc2.status != 409:
                    raise
                current = _raw(read, meta["name"], meta["namespace"])
        wanted = {k: v for k, v in obj.items() if k in ("spec", "data")}
        wanted["metadata"] = {k: meta[k] for k in ("labels", "annotations") if k in meta}
        if kind == "Service" and "selector" in (wanted.get("spec") or {}):
            # a Service's selector is ours whole: a key we no longer select on is removed (merge-patch
            # null), e.g. the track label the model's Service selects on while a canary mirrors
            have = (current.get("spec") or {}).get("selector") or {}
            gone = {key: None for key in have if key not in wanted["spec"]["selector"]}
            if gone:
                wanted["spec"] = {**wanted["spec"], "selector": {**wanted["spec"]["selector"], **gone}}
        if not _subset_differs(wanted, current):
            return "unchanged"
        try:
            patch(meta["name"], meta["namespace"], wanted, _content_type=MERGE_PATCH, _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return "gone"  # deleted since it was read (not a rejection): the next tick creates it
        return "patched"

    def delete(self, kind: str, name: str, namespace: str) -> bool:
        _, _, _, delete = self._ops(kind)
        with _rejecting(kind, namespace, name):
            try:
                delete(name, namespace, propagation_policy="Background")
                return True
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise

    def create(self, obj: dict[str, Any]) -> bool:
        """Create; False when it already exists (restart safety: creating twice is harmless)."""
        _, create, _, _ = self._ops(obj["kind"])
        meta = obj["metadata"]
        with _rejecting(obj["kind"], meta["namespace"], meta.get("name", "")):
            try:
                create(meta["namespace"], obj, _preload_content=False)  # raw: no typed model to build
                return True
            except ApiException as exc:
                if exc.status == 409:
                    return False
                raise

    # -- reads ------------------------------------------------------------------------------------
    def list_jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return list(_raw(self.batch.list_namespaced_job, namespace, label_selector=selector)["items"])

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return list(_raw(self.core.list_namespaced_pod, namespace, label_selector=selector)["items"])

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        read, _, _, _ = self._ops(kind)
        try:
            return dict(_raw(read, name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def pvc_exists(self, namespace: str, claim: str) -> bool:
        try:
            self.core.read_namespaced_persistent_volume_claim(claim, namespace)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    # -- the custom resource ------------------------------------------------------------------
    def get_cmodel(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get_custom(GROUP, VERSION, PLURAL, namespace, name)

    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> str | None:
        """Merge-patch the status; returns the object's new resourceVersion."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            written: Any = self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, body, _content_type=MERGE_PATCH
            )
            meta = written.get("metadata") if isinstance(written, dict) else None
            return meta.get("resourceVersion") if isinstance(meta, dict) else None
        except ApiException as exc:
            if exc.status == 409:
                raise StatusConflict(f"{namespace}/{name}") from exc
            raise

    # -- other custom objects (what a traffic router reads and patches) ----------------------------
    def get_custom(
        self, group: str, version: str, plural: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        try:
            body: Any = self.custom.get_namespaced_custom_object(group, version, namespace, plural, name)
            return dict(body)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_custom(
        self, group: str, version: str, plural: str, namespace: str, name: str, body: dict[str, Any]
    ) -> None:
        with _rejecting(plural, namespace, name):
            self.custom.patch_namespaced_custom_object(
                group, version, namespace, plural, name, body, _content_type=MERGE_PATCH
            )

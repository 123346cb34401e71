"""The local cluster's own client of the API server: plain dicts over httpx.

The controllers, the kubelet and the Service proxies read and write the API over HTTP like their real
counterparts do, so every change they make is seen by the operator through its watches, with real
resourceVersions. Plain JSON dicts keep this cheap (the official client's models cost a lot of CPU
per object, and the local cluster polls several times a second).
"""

from __future__ import annotations

from typing import Any

import httpx

MERGE_PATCH = {"content-type": "application/merge-patch+json"}

# (group/version prefix, plural) per kind the local cluster acts on
KINDS: dict[str, tuple[str, str]] = {
    "Pod": ("api/v1", "pods"),
    "Service": ("api/v1", "services"),
    "Event": ("api/v1", "events"),
    "Namespace": ("api/v1", "namespaces"),
    "PersistentVolumeClaim": ("api/v1", "persistentvolumeclaims"),
    "Node": ("api/v1", "nodes"),
    "Deployment": ("apis/apps/v1", "deployments"),
    "Job": ("apis/batch/v1", "jobs"),
    "EndpointSlice": ("apis/discovery.k8s.io/v1", "endpointslices"),
}
CLUSTER_SCOPED = {"Namespace", "Node"}


def register_kind(kind: str, group_version: str, plural: str, *, cluster_scoped: bool = False) -> None:
    """Teach the client a custom resource (e.g. the one a CRD installed): ``group_version`` like
    ``kondense.dev/v1alpha1``. Registering the same kind twice with another path is an error."""
    entry = (f"apis/{group_version}", plural)
    if KINDS.setdefault(kind, entry) != entry:
        raise ValueError(f"kind {kind} is already registered as {KINDS[kind]}, not {entry}")
    if cluster_scoped:
        CLUSTER_SCOPED.add(kind)


class APIError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class APIClient:
    """Synchronous JSON access to the local API server (one per thread: httpx clients are not shared)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self._http = httpx.Client(base_url=url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    @staticmethod
    def path(kind: str, namespace: str | None = None, name: str | None = None, status: bool = False) -> str:
        prefix, plural = KINDS[kind]
        where = f"/namespaces/{namespace}" if namespace and kind not in CLUSTER_SCOPED else ""
        path = f"/{prefix}{where}/{plural}"
        if name:
            path += f"/{name}"
            if status:
                path += "/status"
        return path

    def _check(self, response: httpx.Response, not_found_ok: bool = False) -> Any:
        if response.status_code == 404 and not_found_ok:
            return None
        if response.status_code >= 400:
            try:
                message = response.json().get("message") or response.text
            except ValueError:
                message = response.text
            raise APIError(
                response.status_code, f"{response.request.method} {response.request.url.path}: {message}"
            )
        return response.json()

    def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[Any]:
        params = {"labelSelector": label_selector} if label_selector else None
        body = self._check(self._http.get(self.path(kind, namespace), params=params))
        items: list[Any] = body.get("items") or []
        return items

    def create_at(self, path: str, obj: dict[str, Any]) -> Any:
        """POST to a path outside :data:`KINDS` (e.g. a CustomResourceDefinition)."""
        return self._check(self._http.post(path, json=obj))

    def get(self, kind: str, namespace: str | None, name: str) -> Any:
        return self._check(self._http.get(self.path(kind, namespace, name)), not_found_ok=True)

    def create(self, obj: dict[str, Any]) -> Any:
        namespace = obj["metadata"].get("namespace")
        return self._check(self._http.post(self.path(obj["kind"], namespace), json=obj))

    def patch(self, kind: str, namespace: str | None, name: str, patch: dict[str, Any]) -> Any:
        response = self._http.patch(self.path(kind, namespace, name), json=patch, headers=MERGE_PATCH)
        return self._check(response, not_found_ok=True)

    def patch_status(self, kind: str, namespace: str | None, name: str, status: dict[str, Any]) -> Any:
        """Merge-patch the status subresource; None when the object is gone."""
        response = self._http.patch(
            self.path(kind, namespace, name, status=True), json={"status": status}, headers=MERGE_PATCH
        )
        return self._check(response, not_found_ok=True)

    def delete(self, kind: str, namespace: str | None, name: str) -> bool:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        response = self._http.request("DELETE", self.path(kind, namespace, name), json=body)
        return self._check(response, not_found_ok=True) is not None

"""A fresh local API server per test, reached with the official client through a written kubeconfig.

Every object left in the store when a test ends is validated: built-in kinds against the official
Kubernetes JSON schemas (kubernetes-validate, strict), CompressedModels against the generated CRD.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import kubernetes_validate
import pytest

from kondense.localcluster import LocalAPIServer
from kondense_testing import crd_schema

KUBERNETES_VERSION = kubernetes_validate.utils.latest_version()


def invalid_objects(objects: list[dict[str, Any]]) -> list[str]:
    """One line per object that the official schemas (or the CompressedModel CRD) reject."""
    problems = []
    custom_kinds = {
        (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
        for crd in objects
        if crd["kind"] == "CustomResourceDefinition"
        for version in crd["spec"]["versions"]
    }
    for obj in objects:
        where = f"{obj['kind']} {obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"
        if obj["kind"] == "CompressedModel":
            problems += [f"{where}: {v.path}: {v.message}" for v in crd_schema.violations(obj)]
            continue
        if (obj["apiVersion"], obj["kind"]) in custom_kinds:
            continue  # other custom resources (HTTPRoute, test CRDs) have no schema to check them against
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: no official schema for {obj['apiVersion']} {obj['kind']}")
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{where}: {exc.message}")
    return problems


@pytest.fixture
def api_server() -> Iterator[LocalAPIServer]:
    with LocalAPIServer(bookmark_interval=0.2) as server:
        yield server
        assert invalid_objects(server.dump()) == []


@pytest.fixture
def kubeconfig(api_server: LocalAPIServer, tmp_path: Path) -> Path:
    return api_server.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def api_client(kubeconfig: Path) -> Iterator[kubernetes.client.ApiClient]:
    client = kubernetes.config.new_client_from_config(str(kubeconfig))
    try:
        yield client
    finally:
        client.close()


# The API objects are typed Any: tests send plain dict bodies, as operators do, which the client accepts
# at runtime but its pydantic-typed signatures (V1ConfigMap, ...) do not declare.


@pytest.fixture
def core(api_client: kubernetes.client.ApiClient) -> Any:
    return kubernetes.client.CoreV1Api(api_client)


@pytest.fixture
def custom(api_client: kubernetes.client.ApiClient) -> Any:
    return kubernetes.client.CustomObjectsApi(api_client)

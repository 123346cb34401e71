"""The adapter for kmock 0.8's reading of Namespace paths (kondense.localcluster.namespacepaths).

The local API serves Namespace objects at their real paths, and kmock itself stays as it is for every
other user in the process (no patching of its parser).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import kmock
import pytest
import yarl

from kondense.localcluster import LocalAPIServer, namespacepaths

MERGE = {"content-type": "application/merge-patch+json"}


@pytest.mark.parametrize(
    ("path", "alias"),
    [
        ("/api/v1/namespaces", f"/api/v1/{namespacepaths.ALIAS_PLURAL}"),
        ("/api/v1/namespaces/", f"/api/v1/{namespacepaths.ALIAS_PLURAL}/"),
        ("/api/v1/namespaces/team-a", f"/api/v1/{namespacepaths.ALIAS_PLURAL}/team-a"),
        ("/api/v1/namespaces/team-a/status", f"/api/v1/{namespacepaths.ALIAS_PLURAL}/team-a/status"),
        ("/api/v1/namespaces/team-a/finalize", f"/api/v1/{namespacepaths.ALIAS_PLURAL}/team-a/finalize"),
    ],
)
def test_namespace_object_paths_are_renamed_with_their_query(path: str, alias: str) -> None:
    renamed = namespacepaths.rename(yarl.URL(f"{path}?watch=true&labelSelector=a%3Db"))
    assert renamed is not None
    assert renamed.path == alias
    assert dict(renamed.query) == {"watch": "true", "labelSelector": "a=b"}


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/team-a/pods",  # a namespaced resource: kmock reads these right
        "/api/v1/namespaces/team-a/configmaps/settings",
        "/api/v1/namespaces/team-a/pods/web/status",
        "/apis/apps/v1/namespaces/team-a/deployments",
        "/api/v1/nodes/node-1",
        "/version",
    ],
)
def test_every_other_path_is_left_to_kmock(path: str) -> None:
    assert namespacepaths.rename(yarl.URL(path)) is None


def test_a_request_not_renamed_is_restored_unchanged() -> None:
    request = kmock.Request(method="GET", url="/api/v1/nodes", resource=kmock.resource("", "v1", "nodes"))
    assert namespacepaths.restore(request) is request


def test_namespaces_at_their_real_paths_over_http() -> None:
    with LocalAPIServer(bookmark_interval=0.2) as api, httpx.Client(base_url=api.url, timeout=10) as http:
        created = http.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}})  # fmt: skip
        assert created.status_code == 201, created.text
        assert created.json()["status"] == {"phase": "Active"}
        listed = http.get("/api/v1/namespaces")
        assert listed.json()["kind"] == "NamespaceList"
        assert {"default", "kube-system", "team-a"} <= {n["metadata"]["name"] for n in listed.json()["items"]}
        fetched = http.get("/api/v1/namespaces/team-a")
        assert (fetched.status_code, fetched.json()["metadata"]["name"]) == (200, "team-a")
        assert "namespace" not in fetched.json()["metadata"]  # cluster-scoped
        labelled = http.patch("/api/v1/namespaces/team-a", json={"metadata": {"labels": {"tier": "gold"}}}, headers=MERGE)  # fmt: skip
        assert labelled.json()["metadata"]["labels"] == {"tier": "gold"}
        status = http.patch("/api/v1/namespaces/team-a/status", json={"status": {"phase": "Terminating"}}, headers=MERGE)  # fmt: skip
        assert status.json()["status"]["phase"] == "Terminating"
        # the same path prefix still scopes namespaced resources
        configmap = http.post(
            "/api/v1/namespaces/team-a/configmaps",
            json={
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "settings"},
                "data": {"a": "1"},
            },
        )
        assert configmap.status_code == 201, configmap.text
        assert configmap.json()["metadata"]["namespace"] == "team-a"
        selected = http.get("/api/v1/namespaces", params={"labelSelector": "tier=gold"}).json()["items"]
        assert [n["metadata"]["name"] for n in selected] == ["team-a"]
        assert http.get("/api/v1/namespaces/nowhere").status_code == 404
        assert http.delete("/api/v1/namespaces/team-a").status_code == 200
        assert http.get("/api/v1/namespaces/team-a").status_code == 404


def test_kmock_reactions_see_the_restored_namespace_request() -> None:
    """Failure injection with kmock's DSL matches Namespace requests by their real resource and path."""
    with LocalAPIServer(bookmark_interval=0.2) as api, httpx.Client(base_url=api.url, timeout=10) as http:
        api.emulator[kmock.action.FETCH, kmock.resource("", "v1", "namespaces")] << 503
        assert http.get("/api/v1/namespaces/default").status_code == 503
        assert http.get("/api/v1/namespaces").status_code == 200  # a LIST is not a FETCH


def test_other_kmock_users_in_the_process_keep_kmocks_parsing() -> None:
    """Nothing of kmock is patched: a plain kmock handler (with the emulator module imported) still
    parses the path the way kmock 0.8 does. When this fails, kmock has fixed its parser: drop the
    adapter (kondense.localcluster.namespacepaths)."""
    import kondense.localcluster.emulator  # noqa: F401 - imported on purpose: it must not change kmock

    async def first_request() -> Any:
        async with kmock.RawHandler() as handler, kmock.Server(handler) as server:
            handler.fallback << b"{}"
            await server.client.get("/api/v1/namespaces/team-a")
            return handler[0]

    request = asyncio.run(first_request())
    assert request.namespace == "team-a"
    assert request.resource == kmock.resource(group="", version="v1", plural=None)
    assert request.name is None

"""The local API server's semantics, observed only through the official ``kubernetes`` client over HTTP."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kmock
import kubernetes
import pytest
import yaml
from kubernetes.client import ApiException

from kondense.api.crd import crd
from kondense.localcluster import LocalAPIServer
from kondense_testing.paths import EXAMPLES

GROUP, VERSION, PLURAL = "kondense.dev", "v1alpha1", "compressedmodels"


def api(api_class: type[Any], client: kubernetes.client.ApiClient | None = None) -> Any:
    """An API object of the official client, typed Any: we send dict bodies, as operators do, which the
    client accepts at runtime but its pydantic-typed signatures (V1ConfigMap, ...) do not declare."""
    return api_class(client) if client is not None else api_class()


def compressed_model(name: str = "digits") -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((EXAMPLES / "digits" / "compressedmodel.yaml").read_text())
    body["metadata"] = {"name": name}
    return body


def configmap(name: str, labels: dict[str, str] | None = None, **metadata: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}, **metadata}, "data": {"key": "value"}}


def owner_reference(owner: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name, "uid": owner.metadata.uid}


def deployment(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {"name": "server", "image": "kondense:dev", "env": [{"name": "A", "value": "1"}]},
                        {"name": "sidecar", "image": "busybox"},
                    ]
                },
            },
        },
    }


def status_code(call: Callable[[], Any]) -> int:
    with pytest.raises(ApiException) as caught:
        call()
    body = json.loads(str(caught.value.body))
    assert (
        body["kind"] == "Status" and body["code"] == caught.value.status
    )  # a real Status, not a stack trace
    return int(caught.value.status)


def install_crd(api_client: kubernetes.client.ApiClient) -> None:
    api(kubernetes.client.ApiextensionsV1Api, api_client).create_custom_resource_definition(crd())


# ---- server, kubeconfig, discovery ------------------------------------------------------------------------


def test_kubeconfig_loads_into_the_default_client_configuration(
    api_server: LocalAPIServer, tmp_path: Path
) -> None:
    path = api_server.write_kubeconfig(tmp_path / "config")
    saved = kubernetes.client.Configuration.get_default_copy()
    try:
        kubernetes.config.load_kube_config(str(path))  # what kopf's login_via_client does with $KUBECONFIG
        assert kubernetes.client.Configuration.get_default_copy().host == api_server.url
        names = [ns.metadata.name for ns in api(kubernetes.client.CoreV1Api).list_namespace().items]
        assert names == ["default", "kube-system"]
    finally:
        kubernetes.client.Configuration.set_default(saved)


def test_server_listens_on_loopback_and_stops(tmp_path: Path) -> None:
    with LocalAPIServer() as server:
        assert server.url.startswith("http://127.0.0.1:")
        client = kubernetes.config.new_client_from_config(str(server.write_kubeconfig(tmp_path / "config")))
        version = api(kubernetes.client.VersionApi, client).get_code()
        assert version.major == "1"
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.url
    with pytest.raises(Exception):  # noqa: B017 - any connection error: nothing listens any more
        api(kubernetes.client.CoreV1Api, client).list_namespace(_request_timeout=2)
    client.close()


def test_stopping_ends_open_watches_at_once(tmp_path: Path) -> None:
    server = LocalAPIServer().start()
    client = kubernetes.config.new_client_from_config(str(server.write_kubeconfig(tmp_path / "config")))
    core = api(kubernetes.client.CoreV1Api, client)
    outcome: list[object] = []

    def watch_forever() -> None:  # no timeoutSeconds: only the server can end this stream
        try:
            outcome.append(list(kubernetes.watch.Watch().stream(core.list_namespace, _request_timeout=30)))
        except Exception as exc:  # the stream may end cleanly or with a dropped connection
            outcome.append(exc)

    watcher = threading.Thread(target=watch_forever)
    watcher.start()
    time.sleep(0.5)
    began = time.monotonic()
    server.stop()
    watcher.join(10)
    assert time.monotonic() - began < 5 and not watcher.is_alive() and outcome
    client.close()


def test_discovery_serves_builtins_and_a_crd_once_created(api_client: kubernetes.client.ApiClient) -> None:
    apis = api(kubernetes.client.ApisApi, api_client)
    groups = {group.name for group in apis.get_api_versions().groups}
    assert {"apps", "batch", "events.k8s.io", "coordination.k8s.io", "apiextensions.k8s.io"} <= groups
    assert "gateway.networking.k8s.io" in groups  # HTTPRoute, served from its CRD
    assert GROUP not in groups

    install_crd(api_client)
    groups = {group.name for group in apis.get_api_versions().groups}
    assert GROUP in groups
    # the client's own discovery (kubectl's way to find a resource) must find the new kind
    discovered = kubernetes.dynamic.DynamicClient(api_client).resources.get(
        api_version=f"{GROUP}/{VERSION}", kind="CompressedModel"
    )
    assert discovered.name == PLURAL and discovered.namespaced
    assert set(discovered.short_names) == {"cmodel", "cmodels"}
    assert discovered.subresources["status"].kind == "CompressedModel"

    established = api(kubernetes.client.ApiextensionsV1Api, api_client).read_custom_resource_definition(
        f"{PLURAL}.{GROUP}"
    )
    assert {(c.type, c.status) for c in established.status.conditions} >= {("Established", "True")}


def test_httproute_is_served_as_a_crd(api_client: kubernetes.client.ApiClient, custom: Any) -> None:
    crds = api(kubernetes.client.ApiextensionsV1Api, api_client).list_custom_resource_definition()
    assert [c.metadata.name for c in crds.items] == ["httproutes.gateway.networking.k8s.io"]
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "digits"},
        "spec": {"rules": [{"backendRefs": [{"name": "stable", "port": 80, "weight": 90}]}]},
    }
    custom.create_namespaced_custom_object("gateway.networking.k8s.io", "v1", "default", "httproutes", route)
    stored = custom.get_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", "default", "httproutes", "digits"
    )
    assert stored["spec"] == route["spec"]


def test_deleting_a_crd_stops_serving_it_and_deletes_its_objects(api_client: Any, custom: Any) -> None:
    install_crd(api_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, compressed_model())
    api(kubernetes.client.ApiextensionsV1Api, api_client).delete_custom_resource_definition(
        f"{PLURAL}.{GROUP}"
    )
    assert status_code(lambda: custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)) == 404
    groups = {group.name for group in api(kubernetes.client.ApisApi, api_client).get_api_versions().groups}
    assert GROUP not in groups
    install_crd(api_client)  # a fresh CRD starts empty
    assert custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["items"] == []


def test_crd_names_must_match(api_client: kubernetes.client.ApiClient) -> None:
    wrong = crd()
    wrong["metadata"]["name"] = "models.kondense.dev"
    extensions = api(kubernetes.client.ApiextensionsV1Api, api_client)
    assert status_code(lambda: extensions.create_custom_resource_definition(wrong)) == 422


# ---- object metadata, CRUD and errors ---------------------------------------------------------------------


def test_create_get_replace_delete_with_server_metadata(core: Any) -> None:
    created = core.create_namespaced_config_map("default", configmap("settings"))
    meta = created.metadata
    assert meta.uid and meta.creation_timestamp and meta.namespace == "default"
    assert meta.generation == 1
    fetched = core.read_namespaced_config_map("settings", "default")
    assert fetched.metadata.resource_version == meta.resource_version

    relabelled = core.patch_namespaced_config_map("settings", "default", {"metadata": {"labels": {"a": "b"}}})
    assert int(relabelled.metadata.resource_version) > int(meta.resource_version)
    assert relabelled.metadata.generation == 1  # metadata changes leave the generation alone

    changed = core.patch_namespaced_config_map("settings", "default", {"data": {"key": "other"}})
    assert changed.metadata.generation == 2

    unchanged = core.patch_namespaced_config_map("settings", "default", {"data": {"key": "other"}})
    assert unchanged.metadata.resource_version == changed.metadata.resource_version  # a no-op write

    changed.data = {"replaced": "yes"}
    replaced = core.replace_namespaced_config_map("settings", "default", changed)
    assert replaced.data == {"replaced": "yes"} and replaced.metadata.generation == 3
    assert (
        replaced.metadata.uid == meta.uid and replaced.metadata.creation_timestamp == meta.creation_timestamp
    )

    core.delete_namespaced_config_map("settings", "default")
    assert status_code(lambda: core.read_namespaced_config_map("settings", "default")) == 404


def test_generate_name(core: Any) -> None:
    first = core.create_namespaced_config_map("default", {"metadata": {"generateName": "job-"}})
    second = core.create_namespaced_config_map("default", {"metadata": {"generateName": "job-"}})
    assert first.metadata.name.startswith("job-") and len(first.metadata.name) == len("job-") + 5
    assert first.metadata.name != second.metadata.name


def test_errors_are_kubernetes_statuses(core: Any) -> None:
    core.create_namespaced_config_map("default", configmap("taken"))
    assert status_code(lambda: core.create_namespaced_config_map("default", configmap("taken"))) == 409
    assert status_code(lambda: core.create_namespaced_config_map("default", {"metadata": {}})) == 422
    assert status_code(lambda: core.create_namespaced_config_map("nowhere", configmap("x"))) == 404
    assert status_code(lambda: core.read_namespaced_config_map("missing", "default")) == 404
    assert status_code(lambda: core.delete_namespaced_config_map("missing", "default")) == 404
    assert status_code(lambda: core.patch_namespaced_config_map("missing", "default", {"data": {}})) == 404

    stale = core.read_namespaced_config_map("taken", "default")
    core.patch_namespaced_config_map("taken", "default", {"data": {"key": "newer"}})
    stale.data = {"key": "lost update"}
    assert status_code(lambda: core.replace_namespaced_config_map("taken", "default", stale)) == 409
    assert core.read_namespaced_config_map("taken", "default").data == {"key": "newer"}


def test_dry_run_stores_nothing(core: Any) -> None:
    answer = core.create_namespaced_config_map("default", configmap("dry"), dry_run="All")
    assert answer.metadata.name == "dry"
    assert core.list_namespaced_config_map("default").items == []


# ---- patches ----------------------------------------------------------------------------------------------


def test_merge_patch_replaces_lists_and_null_deletes(api_client: Any, custom: Any) -> None:
    install_crd(api_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, compressed_model())
    patched = custom.patch_namespaced_custom_object(  # the client sends application/merge-patch+json here
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "digits",
        {"spec": {"targets": [{"name": "fp16", "technique": "fp16"}], "compression": None}},
    )
    assert patched["spec"]["targets"] == [{"name": "fp16", "technique": "fp16"}]
    assert "compression" not in patched["spec"]
    assert patched["metadata"]["generation"] == 2


def test_strategic_merge_patch_merges_lists_by_their_keys(api_client: Any) -> None:
    apps = api(kubernetes.client.AppsV1Api, api_client)
    apps.create_namespaced_deployment("default", deployment("digits"))
    patched = apps.patch_namespaced_deployment(  # the client sends a strategic merge patch for a dict body
        "digits",
        "default",
        {
            "metadata": {"finalizers": ["kondense.dev/a"]},
            "spec": {"template": {"spec": {"containers": [{"name": "server", "image": "kondense:v2"}]}}},
        },
    )
    containers = patched.spec.template.spec.containers
    assert [(c.name, c.image) for c in containers] == [("server", "kondense:v2"), ("sidecar", "busybox")]
    assert containers[0].env[0].name == "A"  # merged into the existing container, not replaced
    again = apps.patch_namespaced_deployment(
        "digits", "default", {"metadata": {"finalizers": ["kondense.dev/b"]}}
    )
    assert again.metadata.finalizers == ["kondense.dev/a", "kondense.dev/b"]  # a set, merged
    removed = apps.patch_namespaced_deployment(
        "digits",
        "default",
        {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}}},
    )
    assert [c.name for c in removed.spec.template.spec.containers] == ["server"]
    released = apps.patch_namespaced_deployment(
        "digits", "default", {"metadata": {"$deleteFromPrimitiveList/finalizers": ["kondense.dev/a"]}}
    )
    assert released.metadata.finalizers == ["kondense.dev/b"]


def test_json_patch_and_its_failed_test(core: Any) -> None:
    created = core.create_namespaced_config_map("default", configmap("jp"))
    version = created.metadata.resource_version
    patch = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": version},
        {"op": "add", "path": "/metadata/finalizers", "value": ["kondense.dev/cleanup"]},
    ]
    patched = core.patch_namespaced_config_map("jp", "default", patch)  # a list: application/json-patch+json
    assert patched.metadata.finalizers == ["kondense.dev/cleanup"]
    # kopf relies on a failed "test" (the resourceVersion moved on) being a 422
    assert status_code(lambda: core.patch_namespaced_config_map("jp", "default", patch)) == 422
    core.patch_namespaced_config_map("jp", "default", [{"op": "remove", "path": "/metadata/finalizers"}])


def test_strategic_merge_patch_of_a_custom_resource_is_unsupported(api_client: Any, custom: Any) -> None:
    install_crd(api_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, compressed_model())
    assert (
        status_code(
            lambda: custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                "default",
                PLURAL,
                "digits",
                {"spec": {}},
                _content_type="application/strategic-merge-patch+json",
            )
        )
        == 415
    )


# ---- status subresource -----------------------------------------------------------------------------------


def test_status_subresource_of_a_custom_resource(api_client: Any, custom: Any) -> None:
    install_crd(api_client)
    body = compressed_model()
    body["status"] = {"phase": "Promoted"}
    created = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    assert "status" not in created  # create starts from an empty status

    ignored = custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "digits", {"status": {"phase": "Promoted"}}
    )
    assert "status" not in ignored
    assert ignored["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]

    written = custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "digits",
        {"spec": {"task": "regression"}, "status": {"phase": "Compressing", "observedGeneration": 1}},
    )
    assert written["status"] == {"phase": "Compressing", "observedGeneration": 1}
    assert written["spec"]["task"] == "classification"  # /status changes nothing but status
    assert written["metadata"]["generation"] == 1

    replaced = copy.deepcopy(written)
    replaced["spec"]["task"] = "regression"
    replaced["status"] = {"phase": "Failed"}
    after = custom.replace_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "digits", replaced)
    assert after["spec"]["task"] == "regression" and after["status"]["phase"] == "Compressing"
    assert after["metadata"]["generation"] == 2


def test_status_subresource_of_deployments_and_pods(api_client: Any, core: Any) -> None:
    apps = api(kubernetes.client.AppsV1Api, api_client)
    apps.create_namespaced_deployment("default", deployment("digits"))
    apps.patch_namespaced_deployment("digits", "default", {"status": {"readyReplicas": 1}})
    assert apps.read_namespaced_deployment("digits", "default").status.to_dict() == {
        key: None for key in kubernetes.client.V1DeploymentStatus().to_dict()
    }  # created with an empty status, untouched by the main endpoint
    apps.patch_namespaced_deployment_status(
        "digits", "default", {"status": {"readyReplicas": 1, "replicas": 1}}
    )
    assert apps.read_namespaced_deployment_status("digits", "default").status.ready_replicas == 1

    pod = {
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running"},
    }
    assert core.create_namespaced_pod("default", pod).status.phase == "Pending"
    core.patch_namespaced_pod_status("p", "default", {"status": {"phase": "Succeeded"}})
    assert core.read_namespaced_pod("p", "default").status.phase == "Succeeded"


# ---- custom resources: pruning and defaulting -------------------------------------------------------------


def test_custom_resources_are_pruned_to_their_schema(api_client: Any, custom: Any) -> None:
    install_crd(api_client)
    body = compressed_model()
    body["spec"]["notInTheSchema"] = True
    created = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    assert "notInTheSchema" not in created["spec"]
    assert created["metadata"]["name"] == "digits"  # metadata is never pruned
    status = custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "digits",
        {"status": {"phase": "Compressing", "kopf": {"progress": {}}}},
    )
    assert status["status"] == {"phase": "Compressing"}  # e.g. kopf's status progress storage would vanish


def test_custom_resources_get_schema_defaults(api_client: Any, custom: Any) -> None:
    definition = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.dev"},
        "spec": {
            "group": "example.dev",
            "scope": "Cluster",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "default": {},
                                    "properties": {
                                        "size": {"type": "integer", "default": 3},
                                        "labels": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                    },
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    api(kubernetes.client.ApiextensionsV1Api, api_client).create_custom_resource_definition(definition)
    empty = custom.create_cluster_custom_object("example.dev", "v1", "widgets", {"metadata": {"name": "w"}})
    assert empty["spec"] == {"size": 3}
    kept = custom.create_cluster_custom_object(
        "example.dev", "v1", "widgets", {"metadata": {"name": "x"}, "spec": {"size": 5, "labels": {"a": "b"}}}
    )
    assert kept["spec"] == {"size": 5, "labels": {"a": "b"}}


# ---- selectors --------------------------------------------------------------------------------------------


def test_label_and_field_selectors(core: Any) -> None:
    core.create_namespace({"metadata": {"name": "other"}})
    core.create_namespaced_config_map("default", configmap("stable", {"app": "digits", "track": "stable"}))
    core.create_namespaced_config_map("default", configmap("canary", {"app": "digits", "track": "canary"}))
    core.create_namespaced_config_map("default", configmap("plain"))
    core.create_namespaced_config_map("other", configmap("elsewhere", {"app": "digits"}))

    def names(**query: Any) -> list[str]:
        return sorted(cm.metadata.name for cm in core.list_config_map_for_all_namespaces(**query).items)

    assert names() == ["canary", "elsewhere", "plain", "stable"]
    assert names(label_selector="app=digits") == ["canary", "elsewhere", "stable"]
    assert names(label_selector="app==digits,track=canary") == ["canary"]
    assert names(label_selector="track!=canary") == ["elsewhere", "plain", "stable"]
    assert names(label_selector="track in (canary, stable)") == ["canary", "stable"]
    assert names(label_selector="track notin (canary)") == ["elsewhere", "plain", "stable"]
    assert names(label_selector="track") == ["canary", "stable"]
    assert names(label_selector="!app") == ["plain"]
    assert names(field_selector="metadata.name=plain") == ["plain"]
    assert names(field_selector="metadata.namespace!=default") == ["elsewhere"]
    assert names(field_selector="metadata.namespace=default", label_selector="app") == ["canary", "stable"]
    assert sorted(cm.metadata.name for cm in core.list_namespaced_config_map("other").items) == ["elsewhere"]

    assert status_code(lambda: names(label_selector="app in (digits")) == 400
    assert status_code(lambda: names(field_selector="data.key=value")) == 400  # not a selectable field


def test_delete_collection_by_selector(core: Any) -> None:
    core.create_namespaced_config_map("default", configmap("a", {"batch": "1"}))
    core.create_namespaced_config_map("default", configmap("b", {"batch": "1"}))
    core.create_namespaced_config_map("default", configmap("c", {"batch": "2"}))
    core.delete_collection_namespaced_config_map("default", label_selector="batch=1")
    assert [cm.metadata.name for cm in core.list_namespaced_config_map("default").items] == ["c"]


# ---- watch ------------------------------------------------------------------------------------------------


def watch_events(list_call: Callable[..., Any], *args: Any, **query: Any) -> list[tuple[str, str, str]]:
    """(type, name, resourceVersion) of every event until the server closes the stream."""
    stream = kubernetes.watch.Watch().stream(list_call, *args, _request_timeout=10, **query)
    return [
        (event["type"], event["object"].metadata.name, event["object"].metadata.resource_version)
        for event in stream
    ]


def test_watch_from_a_resource_version_replays_what_followed(core: Any) -> None:
    start = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", configmap("w"))
    middle = core.patch_namespaced_config_map(
        "w", "default", {"data": {"key": "2"}}
    ).metadata.resource_version
    core.delete_namespaced_config_map("w", "default")

    events = watch_events(
        core.list_namespaced_config_map, "default", resource_version=start, timeout_seconds=1
    )
    assert [(kind, name) for kind, name, _ in events] == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]
    versions = [int(version) for _, _, version in events]
    assert versions == sorted(versions) and len(set(versions)) == 3

    events = watch_events(
        core.list_namespaced_config_map, "default", resource_version=middle, timeout_seconds=1
    )
    assert [(kind, name) for kind, name, _ in events] == [("DELETED", "w")]


def test_watch_without_a_resource_version_starts_with_the_current_state(
    core: Any,
) -> None:
    core.create_namespaced_config_map("default", configmap("existing"))
    events = watch_events(core.list_namespaced_config_map, "default", timeout_seconds=1)
    assert [(kind, name) for kind, name, _ in events] == [("ADDED", "existing")]


def test_watch_streams_live_changes_until_its_timeout(core: Any) -> None:
    start = core.list_namespaced_config_map("default").metadata.resource_version
    seen: list[tuple[str, str, str]] = []
    watcher = threading.Thread(
        target=lambda: seen.extend(
            watch_events(
                core.list_namespaced_config_map, "default", resource_version=start, timeout_seconds=2
            )
        )
    )
    began = time.monotonic()
    watcher.start()
    time.sleep(0.5)
    core.create_namespaced_config_map("default", configmap("live"))
    watcher.join(10)
    assert (
        not watcher.is_alive() and 1.5 < time.monotonic() - began < 5
    )  # the server ended it at timeoutSeconds
    assert [(kind, name) for kind, name, _ in seen] == [("ADDED", "live")]


def test_watch_selector_sees_objects_enter_and_leave(core: Any) -> None:
    start = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", configmap("pod-a", {"track": "canary"}))
    core.patch_namespaced_config_map("pod-a", "default", {"metadata": {"labels": {"track": "stable"}}})
    core.patch_namespaced_config_map("pod-a", "default", {"metadata": {"labels": {"track": "canary"}}})
    events = watch_events(
        core.list_namespaced_config_map,
        "default",
        resource_version=start,
        label_selector="track=canary",
        timeout_seconds=1,
    )
    assert [kind for kind, _, _ in events] == ["ADDED", "DELETED", "ADDED"]


def test_watch_bookmarks(core: Any) -> None:
    core.create_namespaced_config_map("default", configmap("quiet"))
    version = core.list_namespaced_config_map("default").metadata.resource_version
    stream = kubernetes.watch.Watch().stream(
        core.list_namespaced_config_map,
        "default",
        resource_version=version,
        allow_watch_bookmarks=True,
        timeout_seconds=1,
        _request_timeout=10,
    )
    events = [(event["type"], event["raw_object"]["metadata"]["resourceVersion"]) for event in stream]
    assert events and set(events) == {("BOOKMARK", version)}  # nothing changed: only bookmarks, at the latest


def test_watch_from_a_compacted_resource_version_is_gone(tmp_path: Path) -> None:
    with LocalAPIServer() as server:
        server.emulator.events_per_resource = 3
        client = kubernetes.config.new_client_from_config(str(server.write_kubeconfig(tmp_path / "config")))
        core = api(kubernetes.client.CoreV1Api, client)
        start = core.list_namespaced_config_map("default").metadata.resource_version
        for index in range(5):
            core.create_namespaced_config_map("default", configmap(f"cm-{index}"))
        with pytest.raises(ApiException) as caught:  # the watch's ERROR event, as kopf and the client expect
            watch_events(
                core.list_namespaced_config_map, "default", resource_version=start, timeout_seconds=1
            )
        assert caught.value.status == 410
        client.close()


# ---- finalizers and garbage collection --------------------------------------------------------------------


def test_finalizers_hold_deletion_until_removed(core: Any) -> None:
    core.create_namespaced_config_map("default", configmap("held", finalizers=["kondense.dev/cleanup"]))
    core.delete_namespaced_config_map("held", "default")
    held = core.read_namespaced_config_map("held", "default")
    assert held.metadata.deletion_timestamp is not None
    assert (
        status_code(
            lambda: core.patch_namespaced_config_map(
                "held", "default", {"metadata": {"finalizers": ["kondense.dev/cleanup", "kondense.dev/late"]}}
            )
        )
        == 422
    )  # no new finalizers on an object being deleted
    # A strategic merge patch merges finalizers as a set: [] removes nothing (kopf uses JSON patches).
    still = core.patch_namespaced_config_map("held", "default", {"metadata": {"finalizers": []}})
    assert still.metadata.finalizers == ["kondense.dev/cleanup"]
    core.patch_namespaced_config_map("held", "default", {"metadata": {"finalizers": None}})
    assert status_code(lambda: core.read_namespaced_config_map("held", "default")) == 404


def test_background_deletion_collects_dependents_recursively(core: Any) -> None:
    owner = core.create_namespaced_config_map("default", configmap("owner"))
    child = core.create_namespaced_config_map(
        "default", configmap("child", ownerReferences=[owner_reference(owner)])
    )
    core.create_namespaced_config_map(
        "default", configmap("grandchild", ownerReferences=[owner_reference(child)])
    )
    other_owner = core.create_namespaced_config_map("default", configmap("other-owner"))
    core.create_namespaced_config_map(
        "default", configmap("shared", ownerReferences=[owner_reference(owner), owner_reference(other_owner)])
    )
    core.delete_namespaced_config_map("owner", "default")
    names = sorted(cm.metadata.name for cm in core.list_namespaced_config_map("default").items)
    assert names == ["other-owner", "shared"]  # a dependent stays while any owner exists
    core.delete_namespaced_config_map("other-owner", "default")
    assert core.list_namespaced_config_map("default").items == []


def test_foreground_deletion_waits_for_dependents(core: Any) -> None:
    owner = core.create_namespaced_config_map("default", configmap("owner"))
    core.create_namespaced_config_map(
        "default",
        configmap("held-child", ownerReferences=[owner_reference(owner)], finalizers=["kondense.dev/x"]),
    )
    core.delete_namespaced_config_map("owner", "default", propagation_policy="Foreground")
    waiting = core.read_namespaced_config_map("owner", "default")
    assert waiting.metadata.deletion_timestamp is not None
    assert waiting.metadata.finalizers == ["foregroundDeletion"]
    assert core.read_namespaced_config_map("held-child", "default").metadata.deletion_timestamp is not None
    core.patch_namespaced_config_map("held-child", "default", {"metadata": {"finalizers": None}})
    assert core.list_namespaced_config_map("default").items == []  # the child went, then its owner


def test_orphan_deletion_keeps_dependents(core: Any) -> None:
    owner = core.create_namespaced_config_map("default", configmap("owner"))
    core.create_namespaced_config_map("default", configmap("child", ownerReferences=[owner_reference(owner)]))
    core.delete_namespaced_config_map("owner", "default", propagation_policy="Orphan")
    child = core.read_namespaced_config_map("child", "default")
    assert child.metadata.owner_references is None


def test_deleting_a_namespace_deletes_its_objects(core: Any) -> None:
    core.create_namespace({"metadata": {"name": "scratch"}})
    core.create_namespaced_config_map("scratch", configmap("inside"))
    core.create_namespaced_config_map("default", configmap("outside"))
    core.delete_namespace("scratch")
    assert [cm.metadata.name for cm in core.list_config_map_for_all_namespaces().items] == ["outside"]


# ---- events -----------------------------------------------------------------------------------------------


def test_both_event_apis_accept_events(api_client: kubernetes.client.ApiClient, core: Any) -> None:
    regarding = {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "namespace": "default"}
    core.create_namespaced_event(
        "default",
        {
            "metadata": {"generateName": "x-"},
            "involvedObject": regarding,
            "reason": "Tested",
            "message": "core v1",
            "type": "Normal",
        },
    )
    api(kubernetes.client.EventsV1Api, api_client).create_namespaced_event(
        "default",
        {
            "metadata": {"generateName": "x-"},
            "regarding": regarding,
            "reason": "Tested",
            "note": "events.k8s.io",
            "type": "Normal",
            "action": "Test",
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "reportingController": "kondense.dev/tests",
            "reportingInstance": "tests",
        },
    )
    assert [
        e.message for e in core.list_namespaced_event("default", field_selector="involvedObject.name=x").items
    ] == ["core v1"]
    assert len(api(kubernetes.client.EventsV1Api, api_client).list_namespaced_event("default").items) == 1


def test_kmock_reactions_still_take_precedence_for_failure_injection(
    api_server: LocalAPIServer, core: Any
) -> None:
    api_server.emulator[kmock.action.CREATE, kmock.resource("", "v1", "configmaps")] << 503
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_config_map("default", configmap("flaky"))
    assert caught.value.status == 503
    # As in kmock, the write itself still happens: the injected failure is a lost response.
    assert core.read_namespaced_config_map("flaky", "default").data == {"key": "value"}


def test_dump_returns_every_object(api_server: LocalAPIServer, core: Any) -> None:
    core.create_namespaced_config_map("default", configmap("dumped"))
    kinds = [(obj["kind"], obj["metadata"]["name"]) for obj in api_server.dump()]
    assert kinds == [
        ("Namespace", "default"),
        ("Namespace", "kube-system"),
        ("CustomResourceDefinition", "httproutes.gateway.networking.k8s.io"),
        ("ConfigMap", "dumped"),
    ]

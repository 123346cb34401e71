"""The wire formats real kubectl reads, as pure functions: discovery, OpenAPI v3, Tables, validation.

(``test_kubectl_compat.py`` drives the kubectl binary against them; these pin the details fast.)
"""

from __future__ import annotations

import datetime
from typing import Any

import kmock
import pytest

from kondense.api.crd import crd
from kondense.localcluster import discovery, openapi, tables, validation

NOW = datetime.datetime(2026, 12, 2, 12, 0, 0, tzinfo=datetime.UTC)
CMODEL = kmock.resource("kondense.dev", "v1alpha1", "compressedmodels")
CMODEL_INFO = kmock.ResourceInfo(
    kind="CompressedModel",
    singular="compressedmodel",
    namespaced=True,
    verbs={"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"},
    shortnames={"cmodel", "cmodels"},
    categories={"kondense"},
    subresources={"status"},
)


def schema() -> dict[str, Any]:
    version: dict[str, Any] = crd()["spec"]["versions"][0]
    return dict(version["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(-5, "<invalid>"), (-1, "0s"), (45, "45s"), (119, "119s"), (303, "5m3s"), (600, "10m"),
     (3 * 3600 + 300, "3h5m"), (10 * 3600, "10h"), (52 * 3600, "2d4h"), (30 * 86400, "30d"),
     (800 * 86400, "2y70d"), (9 * 365 * 86400, "9y")],
)  # fmt: skip
def test_ages_read_like_kubectl(seconds: int, shown: str) -> None:
    assert tables.human_duration(seconds) == shown


def test_jsonpath_of_printer_columns() -> None:
    obj = {"status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "Done", "status": "True"}],
                      "canary": {"weight": 25}}, "metadata": {"labels": {"app.kubernetes.io/name": "x"}}}  # fmt: skip
    assert tables.jsonpath(obj, ".status.canary.weight") == [25]
    assert tables.jsonpath(obj, '.status.conditions[?(@.type=="Done")].status') == ["True"]
    assert tables.jsonpath(obj, ".status.conditions[-1].type") == ["Done"]
    assert tables.jsonpath(obj, ".status.conditions[*].type") == ["Ready", "Done"]
    assert tables.jsonpath(obj, ".metadata.labels['app.kubernetes.io/name']") == ["x"]
    assert tables.jsonpath(obj, ".status.missing.deeper") == []


def test_custom_resource_table_follows_the_printer_columns() -> None:
    columns = crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    obj = {"metadata": {"name": "digits", "creationTimestamp": "2026-12-02T11:55:00Z"},
           "status": {"phase": "Canary", "selectedVariant": "int8", "canary": {"weight": 25, "p99Ms": 3.5}}}  # fmt: skip
    table = tables.table([obj], group="kondense.dev", plural="compressedmodels", printer_columns=columns,
                         custom=True, resource_version="7", now=NOW)  # fmt: skip
    assert [c["name"] for c in table["columnDefinitions"]] == [
        "Name",
        "Phase",
        "Variant",
        "Weight",
        "P99",
        "AccDelta",
        "Age",
    ]
    assert table["rows"][0]["cells"] == ["digits", "Canary", "int8", 25, 3.5, None, "5m"]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    # no printer columns: Name and Age, as a CRD defaults them
    bare = tables.table(
        [obj], group="g", plural="things", printer_columns=[], custom=True, resource_version="7", now=NOW
    )
    assert [c["name"] for c in bare["columnDefinitions"]] == ["Name", "Age"]


def test_pod_status_column_reads_container_states() -> None:
    def pod(**status: Any) -> dict[str, Any]:
        return {"metadata": {"name": "p", "creationTimestamp": "2026-12-02T11:00:00Z"},
                "spec": {"containers": [{"name": "a"}]}, "status": status}  # fmt: skip

    crashing = pod(phase="Running", containerStatuses=[
        {"name": "a", "ready": False, "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
         "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-12-02T11:59:00Z"}}}])  # fmt: skip
    assert tables._pod(crashing, NOW)[1:4] == ["0/1", "CrashLoopBackOff", "4 (60s ago)"]
    done = pod(phase="Succeeded", containerStatuses=[
        {"name": "a", "ready": False, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}])  # fmt: skip
    assert tables._pod(done, NOW)[1:4] == ["0/1", "Completed", "0"]
    killed = pod(phase="Failed", containerStatuses=[
        {"name": "a", "restartCount": 0, "state": {"terminated": {"exitCode": 137, "signal": 9}}}])  # fmt: skip
    assert tables._pod(killed, NOW)[2] == "Signal:9"


def test_legacy_discovery_lists_subresources_without_short_names() -> None:
    listed = discovery.api_resource_list([(CMODEL, CMODEL_INFO)], "kondense.dev", "v1alpha1")
    assert listed is not None
    main, status = listed["resources"]
    assert main["name"] == "compressedmodels" and main["shortNames"] == ["cmodel", "cmodels"]
    assert status == {"name": "compressedmodels/status", "singularName": "", "namespaced": True,
                      "kind": "CompressedModel", "verbs": ["get", "patch", "update"]}  # fmt: skip


def test_aggregated_discovery_nests_subresources() -> None:
    accept = f"{discovery.AGGREGATED_V2},{discovery.AGGREGATED_V2BETA1},application/json"
    media = discovery.wants_aggregated(accept)
    assert media == discovery.AGGREGATED_V2
    assert discovery.wants_aggregated("application/json") is None
    document = discovery.aggregated([(CMODEL, CMODEL_INFO)], legacy=False, media_type=media)
    assert document["apiVersion"] == "apidiscovery.k8s.io/v2"
    (group,) = document["items"]
    (version,) = group["versions"]
    (resource,) = version["resources"]
    assert (group["metadata"]["name"], version["version"], version["freshness"]) == (
        "kondense.dev",
        "v1alpha1",
        "Current",
    )
    assert resource["scope"] == "Namespaced" and resource["shortNames"] == ["cmodel", "cmodels"]
    assert resource["subresources"] == [
        {"subresource": "status", "verbs": ["get", "patch", "update"],
         "responseKind": {"group": "kondense.dev", "version": "v1alpha1", "kind": "CompressedModel"}}
    ]  # fmt: skip
    assert discovery.aggregated([(CMODEL, CMODEL_INFO)], legacy=True, media_type=media)["items"] == []


def test_versions_sort_as_kubernetes_prefers_them() -> None:
    assert sorted(["v1beta1", "v1", "v2alpha1", "v2", "v1alpha1", "v2beta2"], key=discovery.version_priority) == [
        "v2", "v1", "v2beta2", "v1beta1", "v2alpha1", "v1alpha1",
    ]  # fmt: skip


def test_openapi_documents_declare_server_side_field_validation() -> None:
    document = openapi.group_version_document(
        "kondense.dev", "v1alpha1", [("compressedmodels", CMODEL_INFO, schema(), True)]
    )
    assert document is not None
    patch = document["paths"]["/apis/kondense.dev/v1alpha1/namespaces/{namespace}/compressedmodels/{name}"][
        "patch"
    ]
    assert patch["x-kubernetes-group-version-kind"] == {
        "group": "kondense.dev",
        "version": "v1alpha1",
        "kind": "CompressedModel",
    }
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    # custom resources take no strategic merge patches; built-ins do
    assert "application/strategic-merge-patch+json" not in patch["requestBody"]["content"]
    schemas = document["components"]["schemas"]
    model = schemas["dev.kondense.v1alpha1.CompressedModel"]
    assert model["x-kubernetes-group-version-kind"][0]["kind"] == "CompressedModel"
    assert openapi.OBJECT_META in schemas  # the references resolve within the document
    apps = openapi.group_version_document("apps", "v1", [("deployments", kmock.ResourceInfo(
        kind="Deployment", namespaced=True, verbs={"patch", "get"}, subresources={"status"}), None, False)])  # fmt: skip
    assert apps is not None
    deployment = apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]
    assert deployment["type"] == "object"  # one type, not JSON Schema's ["object", "null"]
    assert deployment["properties"]["spec"] == {
        "allOf": [{"$ref": "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"}],
        "description": "Specification of the desired behavior of the Deployment.",
    }
    assert apps["components"]["schemas"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] == {
        "type": "string", "format": "int-or-string"
    }  # fmt: skip
    patch_types = apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"][
        "requestBody"
    ]
    assert "application/strategic-merge-patch+json" in patch_types["content"]


def test_unknown_fields_are_found_by_path() -> None:
    model = {"apiVersion": "kondense.dev/v1alpha1", "kind": "CompressedModel",
             "metadata": {"name": "m", "labelz": {}},
             "spec": {"task": "classification", "foo": 1, "targets": [{"name": "a", "bar": 2}]}}  # fmt: skip
    assert validation.unknown_in_custom(model, schema()) == [
        "spec.foo",
        "spec.targets[0].bar",
        "metadata.labelz",
    ]
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                  "spec": {"replicas": 1, "replica": 2, "template": {"spec": {"containers": [{"name": "c", "imag": "x"}]}}}}  # fmt: skip
    assert validation.unknown_in_builtin(deployment) == [
        "spec.replica",
        "spec.template.spec.containers[0].imag",
    ]
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "annotations": {"any": "thing"}},
                 "data": {"free": "form"}}  # fmt: skip
    assert validation.unknown_in_builtin(configmap) == []


def test_schema_violations_read_like_the_api_server() -> None:
    bounded = {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "maxLength": 3, "pattern": "^[a-z]+$"},
        "count": {"type": "integer", "minimum": 1, "maximum": 5},
        "ratio": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
        "mode": {"type": "string", "enum": ["a", "b"]},
        "steps": {"type": "array", "maxItems": 1, "items": {"type": "integer"}},
        "port": {"x-kubernetes-int-or-string": True},
        "nothing": {"type": "string"},
    }}  # fmt: skip
    obj = {
        "spec": {
            "name": "ABCD",
            "count": 9,
            "ratio": 0,
            "mode": "c",
            "steps": [1, "x"],
            "port": 1.5,
            "nothing": None,
        }
    }
    causes = validation.validate_custom(obj, {"type": "object", "properties": {"spec": bounded}})
    assert [cause.text() for cause in causes] == [
        "spec.name: Too long: may not be more than 3 bytes",
        "spec.name: Invalid value: \"ABCD\": spec.name in body should match '^[a-z]+$'",
        "spec.count: Invalid value: 9: spec.count in body should be less than or equal to 5",
        "spec.ratio: Invalid value: 0: spec.ratio in body should be greater than 0",
        'spec.mode: Unsupported value: "c": supported values: "a", "b"',
        "spec.steps: Too many: 2: must have at most 1 items",
        'spec.steps[1]: Invalid value: "string": spec.steps[1] in body must be of type integer: "x"',
        'spec.port: Invalid value: "number": spec.port in body must be of type integer,string: 1.5',
    ]
    assert [
        c.reason for c in validation.validate_custom({"spec": {}}, {"properties": {"spec": bounded}})
    ] == ["FieldValueRequired"]
    assert (
        validation.validate_custom(
            {"spec": {"name": "ok", "port": "http"}}, {"properties": {"spec": bounded}}
        )
        == []
    )

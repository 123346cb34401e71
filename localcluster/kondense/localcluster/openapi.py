"""OpenAPI v3 documents (``/openapi/v3`` and one per group version), as kubectl reads them.

kubectl 1.35 downloads them to decide whether the server validates fields itself (``fieldValidation``
among the PATCH parameters of the kind: then ``apply``/``create`` send ``fieldValidation=Strict`` and skip
client-side validation, which would need ``/openapi/v2`` in protobuf), to compute strategic merge patches
for built-in kinds, and for ``kubectl explain``.

The schemas are not written here: built-in kinds come from the official Kubernetes definitions shipped
with ``kubernetes-validate`` (the same ones :mod:`~kondense.localcluster.patching` merges by), turned from
JSON Schema back into OpenAPI (``#/components/schemas`` references, one type per schema), and custom
resources from their CRD's ``openAPIV3Schema``, named as the API server names them
(``dev.kondense.v1alpha1.CompressedModel`` for group ``kondense.dev``).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import kmock

from kondense.localcluster import discovery, patching

_DEFS_PREFIX = "#/$defs/"
_COMPONENTS_PREFIX = "#/components/schemas/"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
LIST_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"
PATCH = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
STATUS = "io.k8s.apimachinery.pkg.apis.meta.v1.Status"
DELETE_OPTIONS = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"
_PATCH_SCHEMA = {
    "type": "object",
    "description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.",
}
_BUILTIN_PATCH_TYPES: tuple[str, ...] = (
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
)
_CUSTOM_PATCH_TYPES: tuple[str, ...] = (
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
)


def _query(name: str, description: str, type_: str = "string") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "description": description,
        "schema": {"type": type_, "uniqueItems": True},
    }


_WRITE_PARAMS = [
    _query("dryRun", "When present, indicates that modifications should not be persisted."),
    _query(
        "fieldManager",
        "fieldManager is a name associated with the actor or entity that is making these changes.",
    ),
    _query(
        "fieldValidation",
        "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) "
        "containing unknown or duplicate fields. Valid values are: Ignore, Warn (the default), Strict.",
    ),
]
_PATCH_PARAMS = [*_WRITE_PARAMS, _query("force", 'Force is going to "force" Apply requests.', "boolean")]


def _convert(schema: Any) -> Any:
    """A kubernetes-validate JSON Schema fragment as OpenAPI v3 (refs, single types, no kind enums)."""
    if isinstance(schema, list):
        return [_convert(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and value.startswith(_DEFS_PREFIX):
            result["$ref"] = _COMPONENTS_PREFIX + value[len(_DEFS_PREFIX) :]
        elif key == "type" and isinstance(value, list):
            types = [t for t in value if t != "null"]
            if types:
                result["type"] = types[0]
        elif key == "oneOf" and all(isinstance(o, Mapping) and set(o) == {"type"} for o in value):
            # IntOrString and Quantity: a string on the wire (int-or-string when integers are allowed too)
            result["type"] = "string"
            allowed = {t for o in value for t in (o["type"] if isinstance(o["type"], list) else [o["type"]])}
            if "integer" in allowed:
                result["format"] = "int-or-string"
        elif key == "properties" and isinstance(value, Mapping):
            result[key] = {name: _convert(sub) for name, sub in value.items()}
        else:
            result[key] = _convert(value)
    if (
        "$ref" in result and len(result) > 1
    ):  # OpenAPI 3.0 ignores siblings of $ref: wrap it as the server does
        ref = result.pop("$ref")
        result["allOf"] = [{"$ref": ref}]
    return result


@functools.cache
def _builtin_components() -> dict[str, Any]:
    definitions = patching._definitions()  # the official definitions, loaded once for patching too
    converted = {}
    for name, definition in definitions.items():
        schema = _convert(definition)
        for field in ("apiVersion", "kind"):
            prop = (schema.get("properties") or {}).get(field)
            if isinstance(prop, dict):
                prop.pop("enum", None)
        converted[name] = schema
    converted[PATCH] = _PATCH_SCHEMA
    return converted


def _refs(schema: Any) -> Iterable[str]:
    if isinstance(schema, Mapping):
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(_COMPONENTS_PREFIX):
                yield value[len(_COMPONENTS_PREFIX) :]
            else:
                yield from _refs(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _refs(item)


def _closure(roots: Iterable[str], components: Mapping[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in found or name not in components:
            continue
        found[name] = components[name]
        pending.extend(_refs(components[name]))
    return found


def schema_name(group: str, version: str, kind: str) -> str:
    """How the API server names a custom resource's schema: the group reversed, then version and kind."""
    return ".".join([*reversed(group.split(".")), version, kind])


def _crd_schema(group: str, version: str, kind: str, schema: Mapping[str, Any] | None) -> dict[str, Any]:
    converted = copy.deepcopy(
        dict(schema or {"type": "object", "x-kubernetes-preserve-unknown-fields": True})
    )
    properties = converted.setdefault("properties", {})
    properties["apiVersion"] = {
        "type": "string",
        "description": "APIVersion defines the versioned schema of this representation of an object.",
    }
    properties["kind"] = {
        "type": "string",
        "description": "Kind is a string value representing the REST resource this object represents.",
    }
    properties["metadata"] = {
        "allOf": [{"$ref": _COMPONENTS_PREFIX + OBJECT_META}],
        "description": "Standard object's metadata.",
    }
    converted["x-kubernetes-group-version-kind"] = [{"group": group, "version": version, "kind": kind}]
    return converted


def _operation(
    action: str,
    gvk: Mapping[str, str],
    response: str,
    *,
    params: list[dict[str, Any]] | None = None,
    body: tuple[tuple[str, ...], str] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": f"{action}{gvk['kind']}",
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": dict(gvk),
        "responses": {
            "200": {
                "description": "OK",
                "content": {"application/json": {"schema": {"$ref": _COMPONENTS_PREFIX + response}}},
            }
        },
    }
    if params:
        operation["parameters"] = params
    if body is not None:
        media_types, schema = body
        operation["requestBody"] = {
            "content": {media: {"schema": {"$ref": _COMPONENTS_PREFIX + schema}} for media in media_types},
            "required": True,
        }
    return operation


def _paths(
    group: str,
    version: str,
    plural: str,
    info: kmock.ResourceInfo,
    kind_schema: str,
    list_schema: str,
    patch_types: tuple[str, ...],
) -> dict[str, Any]:
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    where = "/namespaces/{namespace}" if info.namespaced else ""
    gvk = {"group": group, "version": version, "kind": info.kind or plural.capitalize()}
    verbs = set(info.verbs)
    collection: dict[str, Any] = {}
    item: dict[str, Any] = {}
    if "list" in verbs:
        collection["get"] = _operation("list", gvk, list_schema)
    if "create" in verbs:
        collection["post"] = _operation(
            "post", gvk, kind_schema, params=_WRITE_PARAMS, body=(("application/json",), kind_schema)
        )
    if "deletecollection" in verbs:
        collection["delete"] = _operation("deletecollection", gvk, STATUS)
    if "get" in verbs:
        item["get"] = _operation("get", gvk, kind_schema)
    if "update" in verbs:
        item["put"] = _operation(
            "put", gvk, kind_schema, params=_WRITE_PARAMS, body=(("application/json",), kind_schema)
        )
    if "patch" in verbs:
        item["patch"] = _operation("patch", gvk, kind_schema, params=_PATCH_PARAMS, body=(patch_types, PATCH))
    if "delete" in verbs:
        item["delete"] = _operation("delete", gvk, STATUS, body=(("application/json",), DELETE_OPTIONS))
    paths = {}
    if collection:
        paths[f"{prefix}{where}/{plural}"] = collection
    if item:
        paths[f"{prefix}{where}/{plural}/{{name}}"] = item
    if "status" in info.subresources:
        paths[f"{prefix}{where}/{plural}/{{name}}/status"] = {
            "get": _operation("get", gvk, kind_schema),
            "put": _operation(
                "put", gvk, kind_schema, params=_WRITE_PARAMS, body=(("application/json",), kind_schema)
            ),
            "patch": _operation("patch", gvk, kind_schema, params=_PATCH_PARAMS, body=(patch_types, PATCH)),
        }
    return paths


def group_version_document(
    group: str,
    version: str,
    resources: Iterable[tuple[str, kmock.ResourceInfo, Mapping[str, Any] | None, bool]],
) -> dict[str, Any] | None:
    """The OpenAPI v3 document of one group version: ``(plural, info, crd schema, custom)`` per resource."""
    builtin = _builtin_components()
    by_kind = patching._definition_by_kind()
    api_version = f"{group}/{version}" if group else version
    components: dict[str, Any] = {}
    roots: list[str] = [OBJECT_META, LIST_META, PATCH, STATUS, DELETE_OPTIONS]
    paths: dict[str, Any] = {}
    for plural, info, schema, custom in resources:
        kind = info.kind or plural.capitalize()
        if custom:
            name = schema_name(group, version, kind)
            list_name = f"{name}List"
            components[name] = _crd_schema(group, version, kind, schema)
            components[list_name] = {
                "type": "object",
                "required": ["items"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"allOf": [{"$ref": _COMPONENTS_PREFIX + LIST_META}]},
                    "items": {"type": "array", "items": {"$ref": _COMPONENTS_PREFIX + name}},
                },
                "x-kubernetes-group-version-kind": [
                    {"group": group, "version": version, "kind": f"{kind}List"}
                ],
            }
            patch_types = _CUSTOM_PATCH_TYPES
        else:
            found = by_kind.get((api_version, kind))
            if found is None:
                continue  # a kind without an official schema (none served here today)
            name = found
            list_name = by_kind.get((api_version, f"{kind}List"), name)
            roots += [name, list_name]
            patch_types = _BUILTIN_PATCH_TYPES
        paths.update(_paths(group, version, plural, info, name, list_name, patch_types))
    if not paths:
        return None
    components.update(
        _closure(roots + [ref for schema in list(components.values()) for ref in _refs(schema)], builtin)
    )
    major, minor, patch = discovery.KUBERNETES_VERSION
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": f"v{major}.{minor}.{patch}"},
        "paths": paths,
        "components": {"schemas": dict(sorted(components.items()))},
    }


def document_bytes(document: Mapping[str, Any]) -> tuple[bytes, str]:
    """The JSON of a document and its hash (the ``?hash=`` kubectl caches by)."""
    body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return body, hashlib.sha512(body).hexdigest().upper()


def api_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"

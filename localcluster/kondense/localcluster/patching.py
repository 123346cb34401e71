"""The three PATCH flavours of the Kubernetes API, applied to plain JSON-like dicts.

* ``application/merge-patch+json`` — RFC 7386: maps merge recursively, ``null`` deletes, lists replace.
* ``application/json-patch+json`` — RFC 6902 via the ``jsonpatch`` library (a failed ``test`` op is an
  error, which kopf relies on for its optimistic-concurrency finalizer patches).
* ``application/strategic-merge-patch+json`` — the built-in types' default in the official python client.
  Lists are merged the way their OpenAPI schema says (``x-kubernetes-patch-strategy: merge`` with
  ``x-kubernetes-patch-merge-key``, e.g. containers by ``name``, ownerReferences by ``uid``, finalizers as
  a set); the directives ``$patch: replace|delete``, ``$deleteFromPrimitiveList/<field>``, ``$retainKeys``
  and ``$setElementOrder/<field>`` (order only, ignored) are understood. The schemas are the official
  Kubernetes OpenAPI definitions shipped with ``kubernetes-validate``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

import jsonpatch
from kubernetes_validate import utils as schema_files


class PatchError(ValueError):
    """A patch the API server would refuse with 422 Unprocessable Entity."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON Merge Patch; returns a new value, leaves the inputs alone."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: dict[str, Any], operations: Any) -> dict[str, Any]:
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    try:
        result = jsonpatch.apply_patch(target, operations, in_place=False)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise PatchError(f"the JSON patch could not be applied: {exc}") from exc
    if not isinstance(result, dict):
        raise PatchError("the JSON patch replaced the object with a non-object")
    return result


# ---- strategic merge patch -------------------------------------------------------------------------------


@functools.cache
def _definitions() -> dict[str, Any]:
    version = schema_files.latest_version()
    document = schema_files.schema_contents(
        f"kubernetes-json-schema/v{version}-local/_definitions.json", version
    )
    definitions: dict[str, Any] = document["$defs"]
    return definitions


@functools.cache
def _definition_by_kind() -> dict[tuple[str, str], str]:
    """(apiVersion, kind) -> definition name, from the ``x-kubernetes-group-version-kind`` markers."""
    index = {}
    for name, definition in _definitions().items():
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            index[(api_version, gvk["kind"])] = name
    return index


def _resolve(schema: Mapping[str, Any] | None) -> Mapping[str, Any]:
    while schema and "$ref" in schema:
        schema = _definitions()[schema["$ref"].rsplit("/", 1)[-1]]
    return schema or {}


def has_strategic_schema(api_version: str, kind: str) -> bool:
    return (api_version, kind) in _definition_by_kind()


def strategic_merge_patch(
    target: dict[str, Any], patch: Any, *, api_version: str, kind: str
) -> dict[str, Any]:
    if not isinstance(patch, Mapping):
        raise PatchError("a strategic merge patch must be a JSON object")
    name = _definition_by_kind().get((api_version, kind))
    if name is None:
        raise PatchError(f"no OpenAPI schema for {kind} {api_version}: strategic merge patch is not possible")
    result = _merge_map(target, patch, _definitions()[name])
    if result is None:
        raise PatchError("a strategic merge patch cannot delete the whole object")
    return result


def _strip_directives(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            key: _strip_directives(item)
            for key, item in value.items()
            if not key.startswith("$") and item is not None
        }
    if isinstance(value, list):
        return [
            _strip_directives(item) for item in value if not (isinstance(item, Mapping) and "$patch" in item)
        ]
    return value


def _child_schema(schema: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    schema = _resolve(schema)
    properties = schema.get("properties", {})
    if key in properties:
        return _resolve(properties[key])
    additional = schema.get("additionalProperties")
    return _resolve(additional) if isinstance(additional, Mapping) else {}


def _merge_map(target: Any, patch: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any] | None:
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return dict(_strip_directives(patch))
    if directive is not None:
        raise PatchError(f"unknown $patch directive {directive!r}")
    result = dict(target) if isinstance(target, Mapping) else {}
    if "$retainKeys" in patch:
        retained = set(patch["$retainKeys"] or ())
        result = {key: value for key, value in result.items() if key in retained}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            removed = value or []
            result[field] = [item for item in result.get(field) or [] if item not in removed]
            continue
        if key.startswith("$"):
            raise PatchError(f"unknown strategic merge patch directive {key!r}")
        if value is None:
            result.pop(key, None)
            continue
        child = _child_schema(schema, key)
        current = result.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            merged = _merge_map(current, value, child)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list) and isinstance(current, list) and _merges_lists(child):
            result[key] = _merge_list(current, value, child)
        elif isinstance(value, Mapping) and value.get("$patch") == "delete":
            result.pop(key, None)
        else:
            result[key] = _strip_directives(value)
    return result


def _merges_lists(schema: Mapping[str, Any]) -> bool:
    return "merge" in str(schema.get("x-kubernetes-patch-strategy", "")).split(",")


def _merge_list(target: list[Any], patch: list[Any], schema: Mapping[str, Any]) -> list[Any]:
    if any(isinstance(item, Mapping) and item.get("$patch") == "replace" for item in patch):
        return [
            _strip_directives(item) for item in patch if not (isinstance(item, Mapping) and "$patch" in item)
        ]
    merge_key = schema.get("x-kubernetes-patch-merge-key")
    if merge_key is None:  # a list of scalars merged as a set, e.g. metadata.finalizers
        return list(target) + [item for item in patch if item not in target]
    item_schema = _resolve(schema.get("items"))
    result = list(target)
    for item in patch:
        if not isinstance(item, Mapping) or merge_key not in item:
            raise PatchError(f"list items must be objects with the merge key {merge_key!r}: {item!r}")
        position = next(
            (index for index, existing in enumerate(result) if existing.get(merge_key) == item[merge_key]),
            None,
        )
        if item.get("$patch") == "delete":
            result = [existing for existing in result if existing.get(merge_key) != item[merge_key]]
        elif position is None:
            result.append(_strip_directives(item))
        else:
            merged = _merge_map(result[position], item, item_schema)
            if merged is None:
                del result[position]
            else:
                result[position] = merged
    return result

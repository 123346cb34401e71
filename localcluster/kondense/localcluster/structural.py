"""Structural-schema pruning and defaulting of custom resources, as the API server does on every write.

A field the CRD schema does not declare is dropped (unless ``x-kubernetes-preserve-unknown-fields``), and
declared ``default`` values fill in missing fields, recursively. Operators meet both on a real cluster:
a status field missing from the schema silently vanishes, and a CR read back carries every default.
Validation (types, formats, CEL rules) is not done here.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

# Always kept at the root of a custom resource and inside x-kubernetes-embedded-resource values.
_OBJECT_ENVELOPE = ("apiVersion", "kind", "metadata")


def prune_and_default(obj: dict[str, Any], schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """A new custom resource, unknown fields pruned and defaults applied (``schema``: openAPIV3Schema)."""
    if not schema:
        return copy.deepcopy(obj)
    result = _walk(obj, schema, envelope=True)
    assert isinstance(result, dict)  # the root schema is an object schema; _walk keeps dicts dicts
    return result


def _walk(value: Any, schema: Mapping[str, Any], *, envelope: bool = False) -> Any:
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            return [_walk(item, items) for item in value]
        return copy.deepcopy(value)
    if not isinstance(value, Mapping):
        return copy.deepcopy(value)

    properties: Mapping[str, Any] = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    keep_envelope = envelope or bool(schema.get("x-kubernetes-embedded-resource"))

    result: dict[str, Any] = {}
    for key, item in value.items():
        if keep_envelope and key in _OBJECT_ENVELOPE:  # ObjectMeta is never pruned by the CRD schema
            result[key] = copy.deepcopy(item)
        elif key in properties:
            if item is None and not properties[key].get("nullable") and "default" in properties[key]:
                continue  # a null non-nullable field is dropped, then defaulted below, as the API server does
            result[key] = _walk(item, properties[key])
        elif isinstance(additional, Mapping):
            result[key] = _walk(item, additional)
        elif additional is True or preserve:
            result[key] = copy.deepcopy(item)
        # else: pruned

    for key, subschema in properties.items():
        if key not in result and "default" in subschema:
            result[key] = _walk(copy.deepcopy(subschema["default"]), subschema)
    return result

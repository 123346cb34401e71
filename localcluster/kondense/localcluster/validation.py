"""Field validation as the API server does it on writes: unknown fields, and custom resource schemas.

* Unknown fields (``fieldValidation``): a field neither the CRD's structural schema nor the official
  definition of a built-in kind declares. ``Strict`` (kubectl's default) refuses the write with 400
  ``strict decoding error: unknown field "spec.foo"`` (for server-side apply:
  ``.spec.foo: field not declared in schema``), ``Warn`` (the server's default) answers with a
  ``Warning`` header per field, ``Ignore`` says nothing; the fields are pruned either way.
* Custom resources are checked against their ``openAPIV3Schema`` after defaulting (types, ``nullable``,
  ``x-kubernetes-int-or-string``, ``enum``, bounds, lengths, ``pattern``, item and property counts,
  ``required``, ``anyOf``), each violation a ``cause`` of a 422 ``Invalid`` Status worded as the API
  server words it (``spec.x: Invalid value: "string": spec.x in body must be of type integer: "abc"``).
  CEL rules (``x-kubernetes-validations``) and string ``format`` checks are not evaluated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kondense.localcluster import patching

_ENVELOPE = ("apiVersion", "kind", "metadata")
_OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


@dataclass(frozen=True)
class Cause:
    """One ``details.causes[]`` entry of an Invalid Status."""

    reason: str  # FieldValueInvalid | FieldValueRequired | FieldValueNotSupported | FieldValueTooLong | ...
    field: str
    message: str

    def text(self) -> str:
        return f"{self.field}: {self.message}"


# ---- unknown fields ----------------------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def unknown_in_custom(obj: Mapping[str, Any], schema: Mapping[str, Any] | None) -> list[str]:
    """The paths (``spec.foo``, ``spec.targets[0].bar``) of fields a CRD schema would prune."""
    found: list[str] = []
    if schema:
        _walk_custom(obj, schema, "", found, envelope=True)
    if isinstance(obj.get("metadata"), Mapping):
        _walk_builtin(obj["metadata"], {"$ref": f"#/$defs/{_OBJECT_META}"}, "metadata", found)
    return found


def _walk_custom(
    value: Any, schema: Mapping[str, Any], path: str, found: list[str], *, envelope: bool = False
) -> None:
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            for index, item in enumerate(value):
                _walk_custom(item, items, f"{path}[{index}]", found)
        return
    if not isinstance(value, Mapping):
        return
    properties: Mapping[str, Any] = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    keep_envelope = envelope or bool(schema.get("x-kubernetes-embedded-resource"))
    for key, item in value.items():
        if keep_envelope and key in _ENVELOPE:
            continue
        if key in properties:
            _walk_custom(item, properties[key], _join(path, key), found)
        elif isinstance(additional, Mapping):
            _walk_custom(item, additional, _join(path, key), found)
        elif not (additional is True or preserve):
            found.append(_join(path, key))


def _resolve(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    definitions = patching._definitions()
    while "$ref" in schema:
        schema = definitions.get(schema["$ref"].rsplit("/", 1)[-1], {})
    return schema


def unknown_in_builtin(obj: Mapping[str, Any]) -> list[str]:
    """The paths of fields the official definition of a built-in kind does not declare."""
    name = patching._definition_by_kind().get((str(obj.get("apiVersion")), str(obj.get("kind"))))
    if name is None:
        return []
    found: list[str] = []
    _walk_builtin(obj, {"$ref": f"#/$defs/{name}"}, "", found)
    return found


def _walk_builtin(value: Any, schema: Mapping[str, Any], path: str, found: list[str]) -> None:
    schema = _resolve(schema)
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            for index, item in enumerate(value):
                _walk_builtin(item, items, f"{path}[{index}]", found)
        return
    if not isinstance(value, Mapping):
        return
    properties: Mapping[str, Any] | None = schema.get("properties")
    additional = schema.get("additionalProperties")
    for key, item in value.items():
        if properties is not None and key in properties:
            _walk_builtin(item, properties[key], _join(path, key), found)
        elif isinstance(additional, Mapping):
            _walk_builtin(item, additional, _join(path, key), found)
        elif properties is not None and additional is not True:
            found.append(_join(path, key))


# ---- custom resource schemas ----------------------------------------------------------------------------


def _go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return "null"


def _show(value: Any) -> str:
    """A value as the API server quotes it in messages: strings quoted, numbers bare, the rest as JSON."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) and not value.is_integer() else str(int(value))
    return json.dumps(value, separators=(",", ":"))


def _type_ok(value: Any, expected: str) -> bool:
    match expected:
        case "string":
            return isinstance(value, str)
        case "integer":
            return (isinstance(value, int) and not isinstance(value, bool)) or (
                isinstance(value, float) and value.is_integer()
            )
        case "number":
            return isinstance(value, int | float) and not isinstance(value, bool)
        case "boolean":
            return isinstance(value, bool)
        case "object":
            return isinstance(value, Mapping)
        case "array":
            return isinstance(value, list)
    return True


def validate_custom(obj: Mapping[str, Any], schema: Mapping[str, Any] | None) -> list[Cause]:
    """Every violation of a custom resource's schema (envelope fields are checked by the server itself)."""
    causes: list[Cause] = []
    if not schema:
        return causes
    properties = schema.get("properties") or {}
    for key, sub in properties.items():
        if key in _ENVELOPE:
            continue
        if key in obj:
            _check(obj[key], sub, key, causes)
    for key in schema.get("required") or []:
        if key not in obj and key not in _ENVELOPE:
            causes.append(Cause("FieldValueRequired", key, "Required value"))
    return causes


def _invalid(path: str, value: Any, detail: str) -> Cause:
    return Cause("FieldValueInvalid", path, f"Invalid value: {_show(value)}: {detail}")


def _check(value: Any, schema: Mapping[str, Any], path: str, causes: list[Cause]) -> None:
    if value is None:
        return  # null is allowed where nullable, and dropped by the server (as pruned) where not
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or _type_ok(value, "integer")):
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    path,
                    f'Invalid value: "{_go_type(value)}": {path} in body must be of type integer,string: '
                    f"{_show(value)}",
                )
            )
            return
    else:
        expected = schema.get("type")
        if expected and not _type_ok(value, expected):
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    path,
                    f'Invalid value: "{_go_type(value)}": {path} in body must be of type {expected}: {_show(value)}',
                )
            )
            return
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_show(v) for v in schema["enum"])
        causes.append(
            Cause(
                "FieldValueNotSupported",
                path,
                f"Unsupported value: {_show(value)}: supported values: {supported}",
            )
        )
    if isinstance(value, int | float) and not isinstance(value, bool):
        _check_number(value, schema, path, causes)
    if isinstance(value, str):
        _check_string(value, schema, path, causes)
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            causes.append(
                _invalid(path, len(value), f"{path} in body should have at least {schema['minItems']} items")
            )
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            causes.append(
                Cause(
                    "FieldValueTooMany",
                    path,
                    f"Too many: {len(value)}: must have at most {schema['maxItems']} items",
                )
            )
        items = schema.get("items")
        if isinstance(items, Mapping):
            for index, item in enumerate(value):
                _check(item, items, f"{path}[{index}]", causes)
    if isinstance(value, Mapping):
        _check_object(value, schema, path, causes)
    for branch_key in ("anyOf",):
        branches = schema.get(branch_key)
        if branches and not any(not _branch_causes(value, b, path) for b in branches):
            causes.append(
                _invalid(path, value, f"{path} in body must be valid against one of the allowed schemas")
            )


def _branch_causes(value: Any, schema: Mapping[str, Any], path: str) -> list[Cause]:
    found: list[Cause] = []
    _check(value, schema, path, found)
    return found


def _check_number(value: float, schema: Mapping[str, Any], path: str, causes: list[Cause]) -> None:
    if "minimum" in schema:
        if schema.get("exclusiveMinimum") and value <= schema["minimum"]:
            causes.append(
                _invalid(path, value, f"{path} in body should be greater than {_show(schema['minimum'])}")
            )
        elif value < schema["minimum"]:
            causes.append(
                _invalid(
                    path,
                    value,
                    f"{path} in body should be greater than or equal to {_show(schema['minimum'])}",
                )
            )
    if "maximum" in schema:
        if schema.get("exclusiveMaximum") and value >= schema["maximum"]:
            causes.append(
                _invalid(path, value, f"{path} in body should be less than {_show(schema['maximum'])}")
            )
        elif value > schema["maximum"]:
            causes.append(
                _invalid(
                    path, value, f"{path} in body should be less than or equal to {_show(schema['maximum'])}"
                )
            )


def _check_string(value: str, schema: Mapping[str, Any], path: str, causes: list[Cause]) -> None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        causes.append(
            _invalid(path, value, f"{path} in body should be at least {schema['minLength']} chars long")
        )
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        causes.append(
            Cause("FieldValueTooLong", path, f"Too long: may not be more than {schema['maxLength']} bytes")
        )
    if "pattern" in schema and re.search(schema["pattern"], value) is None:
        causes.append(_invalid(path, value, f"{path} in body should match '{schema['pattern']}'"))


def _check_object(
    value: Mapping[str, Any], schema: Mapping[str, Any], path: str, causes: list[Cause]
) -> None:
    properties = schema.get("properties") or {}
    for key in schema.get("required") or []:
        if key not in value:
            causes.append(Cause("FieldValueRequired", _join(path, key), "Required value"))
    additional = schema.get("additionalProperties")
    for key, item in value.items():
        if key in properties:
            _check(item, properties[key], _join(path, key), causes)
        elif isinstance(additional, Mapping):
            _check(item, additional, f"{path}[{key}]", causes)
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        causes.append(
            Cause(
                "FieldValueTooMany",
                path,
                f"Too many: {len(value)}: must have at most {schema['maxProperties']} items",
            )
        )
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        causes.append(
            _invalid(
                path, len(value), f"{path} in body should have at least {schema['minProperties']} properties"
            )
        )

"""HTTPRoutes checked against the official Gateway API CRD schema (v1, standard channel), vendored in
data/httproute-v1.schema.json from kubernetes-sigs/gateway-api v1.6.1 (descriptions removed), the way the
API server checks them: the schema's defaults applied first, then the OpenAPI schema (jsonschema, unknown
fields rejected) and every CEL rule (cel-python; property names that are CEL keywords escaped as the API
server escapes them, `namespace` -> `__namespace__`)."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import celpy
from celpy import celtypes

from kondense.api.validation import join_path
from kondense_testing.crd_schema import OpenAPIValidator, SchemaViolation, _program, _strict

SCHEMA_FILE = Path(__file__).parent / "data" / "httproute-v1.schema.json"
# CEL keywords the API server escapes in property names (apiextensions-apiserver, cel/escaping)
_CEL_RESERVED = {
    "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if",
    "import", "let", "loop", "package", "namespace", "return", "var",
}  # fmt: skip


@cache
def httproute_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())["openAPIV3Schema"]
    return schema


@cache
def _validator() -> Any:
    return OpenAPIValidator(_strict(httproute_schema()))


def with_defaults(schema: dict[str, Any], value: Any) -> Any:
    """``value`` with the schema's ``default``s filled in (structural defaulting)."""
    if isinstance(value, dict):
        out = dict(value)
        for name, sub in schema.get("properties", {}).items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = with_defaults(sub, out[name])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [with_defaults(schema["items"], item) for item in value]
    return value


def _escaped(value: Any) -> Any:
    if isinstance(value, dict):
        return {(f"__{k}__" if k in _CEL_RESERVED else k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return value


def _cel(schema: dict[str, Any], value: Any, path: list[int | str], out: list[SchemaViolation]) -> None:
    for rule in schema.get("x-kubernetes-validations", []):
        result = _program(rule["rule"]).evaluate({"self": celpy.json_to_cel(_escaped(value))})
        if not (isinstance(result, celtypes.BoolType) and bool(result)):
            out.append(SchemaViolation(join_path(path), f"{rule['message']} ({result!r})"[:400]))
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                _cel(sub, value[name], [*path, name], out)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            _cel(schema["items"], item, [*path, index], out)


def httproute_violations(route: dict[str, Any]) -> list[SchemaViolation]:
    route = with_defaults(httproute_schema(), route)
    out = [
        SchemaViolation(join_path(list(err.absolute_path)), err.message)
        for err in _validator().iter_errors(route)
    ]
    if not out:  # like the API server, CEL runs on objects that are structurally valid
        _cel(httproute_schema(), route, [], out)
    return out

"""Validate objects against the generated CRD the way the API server would.

jsonschema checks the OpenAPI v3 schema (unknown fields rejected, as `kubectl apply` does with its
default strict field validation) and cel-python evaluates every `x-kubernetes-validations` rule at its
place in the object.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cache
from typing import Any

import celpy
import jsonschema
from celpy import celtypes

from kondense.api.crd import crd
from kondense.api.validation import join_path


@dataclass(frozen=True)
class SchemaViolation:
    path: str
    message: str


def _strict(node: dict[str, Any]) -> dict[str, Any]:
    node = copy.deepcopy(node)
    if "properties" in node:
        node.setdefault("additionalProperties", False)
        for name, sub in node["properties"].items():
            if name != "metadata":
                node["properties"][name] = _strict(sub)
    if isinstance(node.get("items"), dict):
        node["items"] = _strict(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _strict(node["additionalProperties"])
    return node


@cache
def open_api_schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


# OpenAPI v3.0 keywords are draft 4 (boolean exclusiveMinimum), but the API server (go-openapi) takes
# 1.0 as an integer, like draft 6+; pydantic's lax ints do the same.
OpenAPIValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator, type_checker=jsonschema.Draft6Validator.TYPE_CHECKER
)


@cache
def _validator() -> Any:
    return OpenAPIValidator(_strict(open_api_schema()))


_env = celpy.Environment()


@cache
def _program(rule: str) -> Any:
    return _env.program(_env.compile(rule))


def _cel(schema: dict[str, Any], value: Any, path: list[int | str], out: list[SchemaViolation]) -> None:
    for rule in schema.get("x-kubernetes-validations", []):
        result = _program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        # an evaluation error (CELEvalError) fails the rule, as it does in the API server
        if not (isinstance(result, celtypes.BoolType) and bool(result)):
            where = (join_path(path) + rule.get("fieldPath", "")).lstrip(".")  # a root rule: ".metadata.name"
            out.append(SchemaViolation(where, rule["message"]))
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                _cel(sub, value[name], [*path, name], out)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, sub_value in value.items():
                _cel(extra, sub_value, [*path, name], out)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            _cel(schema["items"], item, [*path, index], out)


def violations(obj: dict[str, Any]) -> list[SchemaViolation]:
    out = [
        SchemaViolation(join_path(list(err.absolute_path)), err.message)
        for err in _validator().iter_errors(obj)
    ]
    if not out:  # like the API server, CEL runs on objects that are structurally valid
        _cel(open_api_schema(), obj, [], out)
    return out


def all_rules() -> list[str]:
    rules: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            rules.extend(r["rule"] for r in node.get("x-kubernetes-validations", []))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(open_api_schema())
    return rules

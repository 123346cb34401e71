"""Generate the CompressedModel CRD from the pydantic models.

pydantic emits JSON Schema 2020-12 with ``$ref``s, ``anyOf`` for optionals and ``oneOf`` for the
technique-tagged unions. Kubernetes wants a *structural* OpenAPI v3.0 schema: everything inlined,
one type per node, no ``oneOf`` with differing properties. So:

* ``$ref`` is inlined, ``anyOf: [X, null]`` becomes X, ``const`` becomes a one-value ``enum``,
  numeric ``exclusiveMinimum: n`` becomes ``minimum: n`` + ``exclusiveMinimum: true``;
* a technique-tagged union is merged into one object whose ``technique`` is an enum and whose
  ``params`` carry every technique's fields, plus generated CEL rules saying which params (and which
  of ``technique``/``steps``) each technique allows;
* defaults move into descriptions: the operator applies them with the same models, so stored
  objects stay as the user wrote them.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import yaml

from kondense.api import resource as r

TAG = "technique"
_DROP = {"title", "default", "discriminator", "additionalProperties", "$defs"}


class SchemaError(RuntimeError):
    """The models produced a schema this generator cannot express structurally."""


def _cel_list(values: list[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _describe_default(node: dict[str, Any], default: Any) -> None:
    if default is None or default == [] or default == {}:
        return
    text = default if isinstance(default, str) else json.dumps(default)
    suffix = f"(default: {text})"
    node["description"] = f"{node['description']} {suffix}" if node.get("description") else suffix


class StructuralSchema:
    def __init__(self, json_schema: dict[str, Any]) -> None:
        self.defs = json_schema.get("$defs", {})
        self.root = json_schema

    def convert(self) -> dict[str, Any]:
        return self._node(self.root)

    def _node(self, node: dict[str, Any]) -> dict[str, Any]:
        node = copy.deepcopy(node)
        while True:
            if "$ref" in node:
                target = self.defs[node.pop("$ref").split("/")[-1]]
                node = {**copy.deepcopy(target), **node}
            elif "oneOf" in node or ("anyOf" in node and not node.get("x-kubernetes-int-or-string")):
                node = self._union(node, "oneOf" if "oneOf" in node else "anyOf")
                if "anyOf" in node or "oneOf" in node:
                    break
            else:
                break
        out: dict[str, Any] = {}
        default = node.get("default")
        for key, value in node.items():
            if key in _DROP:
                continue
            if key == "const":
                out["enum"] = [value]
            elif key == "properties":
                out["properties"] = {name: self._node(sub) for name, sub in value.items()}
            elif key == "items":
                out["items"] = self._node(value)
            elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
                out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
                out[key] = True
            else:
                out[key] = value
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            out["additionalProperties"] = self._node(extra)
        if "properties" in out or "additionalProperties" in out:
            out.setdefault("type", "object")
        if "enum" in out and "type" not in out:
            out["type"] = "string" if all(isinstance(v, str) for v in out["enum"]) else "integer"
        _describe_default(out, default)
        if "type" not in out and not out.get("x-kubernetes-int-or-string"):
            raise SchemaError(f"schema node without a type: {node}")
        return out

    def _union(self, node: dict[str, Any], key: str) -> dict[str, Any]:
        members = [m for m in node.pop(key) if m.get("type") != "null"]
        if len(members) == 1:
            return {**node, **members[0]}
        if node.get("x-kubernetes-int-or-string"):
            node[key] = members
            return node
        resolved = [self._node(m) for m in members]
        if all(
            m.get("type") == "object" and (TAG in m["properties"] or "steps" in m["properties"])
            for m in resolved
        ):
            return {**node, **merge_tagged(resolved)}
        raise SchemaError(f"cannot express union structurally: {members}")


_DEFAULT_SUFFIX = re.compile(r"\s*\(default: .*\)$", re.S)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def strip(s: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in s.items() if k != "description"}

    return strip(a) == strip(b)


def merge_tagged(variants: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge technique-tagged object schemas into one structural object with CEL rules."""

    def tag_of(v: dict[str, Any]) -> str | None:
        enum = v["properties"].get(TAG, {}).get("enum")
        return enum[0] if enum else None

    tags = [tag_of(v) for v in variants]
    real_tags = [t for t in tags if t is not None]
    props: dict[str, dict[str, Any]] = {}
    allowed: dict[str, list[str | None]] = {}
    params: dict[str, dict[str, Any]] = {}
    params_allowed: dict[str, list[str]] = {}
    for tag, variant in zip(tags, variants, strict=True):
        for name, schema in variant["properties"].items():
            allowed.setdefault(name, []).append(tag)
            if name == TAG:
                continue
            if name == "params":
                for pname, pschema in schema.get("properties", {}).items():
                    assert tag is not None
                    params_allowed.setdefault(pname, []).append(tag)
                    if pname in params:
                        if not _same(params[pname], pschema):
                            raise SchemaError(f"params.{pname} differs between techniques; declare it once")
                        if params[pname].get("description") != pschema.get("description"):
                            # same field, technique-specific defaults: say so instead of picking one
                            base = _DEFAULT_SUFFIX.sub("", pschema.get("description", ""))
                            params[pname]["description"] = (
                                f"{base} (default depends on the technique)".strip()
                            )
                    params.setdefault(pname, copy.deepcopy(pschema))
                continue
            if name in props and not _same(props[name], schema):
                raise SchemaError(f"{name} differs between union members")
            props.setdefault(name, schema)

    merged_props: dict[str, Any] = {}
    for name in variants[0]["properties"]:
        if name != TAG and name != "params" and name in props:
            merged_props[name] = props[name]
    merged_props[TAG] = {
        "type": "string",
        "enum": real_tags,
        "description": "Compression technique: " + ", ".join(real_tags) + ".",
    }
    merged_props["params"] = {
        "type": "object",
        "description": "Technique parameters; which ones apply depends on the technique.",
        "properties": dict(sorted(params.items())),
    }
    for name, schema in props.items():
        merged_props.setdefault(name, schema)

    required_sets = [set(v.get("required", [])) for v in variants]
    required = sorted(set.intersection(*required_sets))
    rules: list[dict[str, str]] = []
    untagged = [i for i, t in enumerate(tags) if t is None]
    if untagged:
        # e.g. a pipeline target: either a technique or its own required fields (steps)
        own = sorted(required_sets[untagged[0]] - set(required))
        for field in own:
            rules.append(
                r.cel(
                    f"has(self.{TAG}) != has(self.{field})",
                    f"set either {TAG} (with params) or {field}, not both",
                )
            )
    own_untagged = set(required_sets[untagged[0]]) - set(required) if untagged else set()
    for name, where in allowed.items():
        if name == TAG or set(where) == set(tags) or name in own_untagged:
            continue  # own fields of the untagged member are covered by the either/or rule above
        where_tags = [t for t in where if t is not None]
        conditions = []
        if where_tags:
            conditions.append(f"(has(self.{TAG}) && self.{TAG} in {_cel_list(where_tags)})")
        if None in where:
            conditions.append(f"!has(self.{TAG})")
        message = (
            f"{name} needs {TAG}"
            if set(where_tags) == set(real_tags)
            else f"{name} applies only to {TAG} " + ", ".join(where_tags)
        )
        rules.append(r.cel(f"!has(self.{name}) || " + " || ".join(conditions), message, f".{name}"))
    for pname, where_tags in sorted(params_allowed.items()):
        if set(where_tags) == set(real_tags):
            continue
        rules.append(
            r.cel(
                f"!has(self.params) || !has(self.params.{pname}) || "
                f"(has(self.{TAG}) && self.{TAG} in {_cel_list(where_tags)})",
                f"params.{pname} applies only to {TAG} {', '.join(where_tags)}",
                f".params.{pname}",
            )
        )
    out: dict[str, Any] = {"type": "object", "properties": merged_props}
    if required:
        out["required"] = required
    if rules:
        out["x-kubernetes-validations"] = rules
    return out


def spec_schema() -> dict[str, Any]:
    return StructuralSchema(r.CompressedModelSpec.model_json_schema()).convert()


def status_schema() -> dict[str, Any]:
    return StructuralSchema(r.CompressedModelStatus.model_json_schema(mode="serialization")).convert()


def open_api_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "A base model, its compression targets and how the best variant is rolled out.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # only name may be declared under metadata; maxLength bounds the CEL rule's cost
            "metadata": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 253}},
            },
            "spec": spec_schema(),
            "status": status_schema(),
        },
        "x-kubernetes-validations": [r.MODEL_NAME_RULE],
    }


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Variant", "type": "string", "jsonPath": ".status.selectedVariant"},
    {"name": "Weight", "type": "integer", "jsonPath": ".status.canary.weight"},
    {"name": "P99", "type": "number", "jsonPath": ".status.canary.p99Ms", "description": "Canary p99 (ms)"},
    {
        "name": "AccDelta",
        "type": "number",
        "jsonPath": ".status.canary.accuracyDelta",
        "description": "Live accuracy delta of the canary against stable",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{r.PLURAL}.{r.GROUP}",
            "labels": {"app.kubernetes.io/name": "kondense", "app.kubernetes.io/part-of": "kondense"},
        },
        "spec": {
            "group": r.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": r.KIND,
                "listKind": f"{r.KIND}List",
                "plural": r.PLURAL,
                "singular": r.SINGULAR,
                "shortNames": list(r.SHORT_NAMES),
                "categories": list(r.CATEGORIES),
            },
            "versions": [
                {
                    "name": r.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": open_api_schema()},
                }
            ],
        },
    }


HEADER = "# Generated by `kondense crd` from the pydantic models in kondense.api.resource. Do not edit.\n"


def crd_yaml() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=100)

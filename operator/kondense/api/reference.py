"""Markdown reference of the CompressedModel spec, generated from the same schema as the CRD."""

from __future__ import annotations

from typing import Any

from kondense.api.crd import spec_schema


def _type(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = node.get("type", "")
    if kind == "array":
        return f"list of {_type(node.get('items', {}))}"
    if kind == "object" and "additionalProperties" in node:
        return f"map of {_type(node['additionalProperties'])}"
    return str(kind)


def _constraints(node: dict[str, Any]) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    lo, hi = node.get("minimum"), node.get("maximum")
    if lo is not None:
        parts.append(f"{'>' if node.get('exclusiveMinimum') else '>='} {lo}")
    if hi is not None:
        parts.append(f"{'<' if node.get('exclusiveMaximum') else '<='} {hi}")
    if "pattern" in node and "enum" not in node:
        parts.append(f"pattern `{node['pattern']}`")
    if "minItems" in node:
        parts.append(f"at least {node['minItems']} items")
    if "maxItems" in node:
        parts.append(f"at most {node['maxItems']} items")
    for rule in node.get("x-kubernetes-validations", []):
        if "fieldPath" not in rule:
            parts.append(rule["message"])
    return "; ".join(parts)


def _rows(node: dict[str, Any], path: str, required: bool, out: list[str], inherited: str = "") -> None:
    description = (node.get("description") or "").replace("\n", " ").replace("|", "\\|")
    constraints = "; ".join(c for c in (_constraints(node), inherited) if c).replace("|", "\\|")
    out.append(
        f"| `{path}` | {_type(node)}{' (required)' if required else ''} | {description} | {constraints} |"
    )
    target = node.get("items") if node.get("type") == "array" else node
    if not isinstance(target, dict) or path.endswith(".params"):
        return
    prefix = f"{path}[]" if node.get("type") == "array" else path
    needed = set(target.get("required", []))
    # rules a parent states about one child (fieldPath) are listed on that child's row
    about: dict[str, list[str]] = {}
    for rule in target.get("x-kubernetes-validations", []):
        if "fieldPath" in rule:
            about.setdefault(rule["fieldPath"], []).append(rule["message"])
    for name, sub in target.get("properties", {}).items():
        _rows(sub, f"{prefix}.{name}", name in needed, out, "; ".join(about.get(f".{name}", [])))
        if name == "params":
            for pname, psub in sub.get("properties", {}).items():
                note = "; ".join(about.get(f".params.{pname}", []))
                _rows(psub, f"{prefix}.params.{pname}", False, out, note)


def markdown() -> str:
    lines = [
        "# CompressedModel reference (`kondense.dev/v1alpha1`)",
        "",
        "Generated from the pydantic models by `kondense crd --reference`; do not edit by hand.",
        "Params apply per technique: the CRD rejects a param that does not belong to its technique.",
        "",
        "| Field | Type | Description | Constraints |",
        "| --- | --- | --- | --- |",
    ]
    _rows(spec_schema(), "spec", True, lines)
    return "\n".join(lines) + "\n"

"""The CRD generated from the models: committed copy, structural rules, Kubernetes schema, CEL."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import yaml

from kondense.api.crd import crd, crd_yaml
from kondense_testing.crd_schema import all_rules, open_api_schema
from kondense_testing.paths import REPO

CRD_FILE = REPO / "crds" / "compressedmodels.kondense.dev.yaml"


def test_committed_crd_equals_generated() -> None:
    assert CRD_FILE.read_text() == crd_yaml(), "crds/ drifted from the models: run `make crd` and commit"


def test_crd_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate.validate(yaml.safe_load(CRD_FILE.read_text()), "1.33", strict=True)


def test_crd_names_columns_and_subresources() -> None:
    spec = crd()["spec"]
    assert spec["names"]["shortNames"] == ["cmodel", "cmodels"]
    assert spec["names"]["categories"] == ["kondense"]
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Variant", "Weight", "P99", "AccDelta", "Age"]


def _structural_problems(node: dict[str, Any], path: str = "") -> list[str]:
    problems = []
    int_or_string = node.get("x-kubernetes-int-or-string")
    if "type" not in node and not int_or_string:
        problems.append(f"{path}: no type")
    for key in ("oneOf", "allOf", "not", "$ref", "nullable", "uniqueItems"):
        if key in node:
            problems.append(f"{path}: {key} is not allowed in a structural schema here")
    if "anyOf" in node and not int_or_string:
        problems.append(f"{path}: anyOf without x-kubernetes-int-or-string")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties together")
    keys = node.get("x-kubernetes-list-map-keys")
    if keys:
        required = node["items"].get("required", [])
        problems += [f"{path}: list-map key {k} not required" for k in keys if k not in required]
    for name, sub in node.get("properties", {}).items():
        problems += _structural_problems(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        problems += _structural_problems(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += _structural_problems(node["additionalProperties"], f"{path}{{}}")
    return problems


def test_schema_is_structural() -> None:
    assert _structural_problems(open_api_schema()) == []


def test_strings_in_cel_rules_are_bounded() -> None:
    # The API server estimates CEL cost from maxItems/maxLength: unbounded lists under rules are refused.
    def lists_without_bound(node: dict[str, Any], path: str = "") -> list[str]:
        out = []
        if node.get("type") == "array" and "maxItems" not in node:
            out.append(path)
        for name, sub in node.get("properties", {}).items():
            out += lists_without_bound(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            out += lists_without_bound(node["items"], f"{path}[]")
        return out

    spec = open_api_schema()["properties"]["spec"]
    assert lists_without_bound(spec, "spec") == []


def test_every_cel_rule_compiles_and_there_are_rules_for_the_cross_field_checks() -> None:
    rules = all_rules()
    assert any("exists_one" in r for r in rules), "unique target names"
    assert any("self[size(self) - 1] == 100" in r for r in rules), "rollout ends at 100"
    assert any("static-int8" in r and "calibration" in r for r in rules), "static-int8 needs calibration"
    assert any("duration(self)" in r for r in rules), "duration bounds"


def test_committed_reference_equals_generated() -> None:
    from kondense.api.reference import markdown

    committed = (REPO / "docs" / "reference.md").read_text()
    assert committed == markdown(), "docs/reference.md drifted from the models: run `make crd` and commit"

"""metadata.name: a DNS-1035 label short enough for every child name and label value the operator
derives from it; refused by the CRD (CEL on self.metadata.name) and by `kondense validate` alike."""

from __future__ import annotations

import copy
import re

import pytest

from kondense.api.crd import crd
from kondense.api.resource import DNS1035_LABEL, MODEL_NAME_MAX
from kondense.api.validation import validate_object
from kondense.operator.naming import derived, name_fits
from kondense_testing.builders import DIGITS
from kondense_testing.crd_schema import violations


def test_the_limit_is_computed_from_the_derived_names() -> None:
    assert name_fits("a" * MODEL_NAME_MAX) and not name_fits("a" * (MODEL_NAME_MAX + 1))
    # every derived name of the longest allowed name is itself a valid DNS label within its limit
    for what, value, limit in derived("m" * MODEL_NAME_MAX):
        assert len(value) <= limit, what
        if "label" not in what:
            assert re.fullmatch(DNS1035_LABEL, value), (what, value)


def test_the_crd_checks_metadata_name_at_the_root() -> None:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = schema["x-kubernetes-validations"]
    assert any("self.metadata.name" in r["rule"] and str(MODEL_NAME_MAX) in r["rule"] for r in rules)
    assert schema["properties"]["metadata"]["properties"] == {"name": {"type": "string", "maxLength": 253}}


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("digits", True),
        ("a", True),
        ("a" * MODEL_NAME_MAX, True),
        ("a" * (MODEL_NAME_MAX + 1), False),
        ("1digits", False),  # Service names must start with a letter
        ("digits.v2", False),
        ("Digits", False),
        ("digits-", False),
        ("-digits", False),
        ("di_gits", False),
        ("x" * 253, False),
    ],
)
def test_model_names(name: str, ok: bool) -> None:
    body = copy.deepcopy(DIGITS)
    body["metadata"]["name"] = name
    _, errors = validate_object(body)
    crd_errors = violations(body)
    if ok:
        assert errors == [] and crd_errors == []
    else:
        assert [e.path for e in errors] == ["metadata.name"]
        assert "DNS-1035" in errors[0].message
        assert crd_errors and all(v.path == "metadata.name" for v in crd_errors)

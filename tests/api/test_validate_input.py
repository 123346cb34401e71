"""`kondense validate` and the models on bad input: clear errors with a location, never a traceback."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kondense.api.techniques import PARAMS_BY_TECHNIQUE, Technique
from kondense.api.validation import validate_object
from kondense_testing.crd_schema import violations
from kondense_testing.paths import EXAMPLES

DIGITS = yaml.safe_load((EXAMPLES / "digits" / "compressedmodel.yaml").read_text())


def validate(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kondense.cli", "validate", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
    )


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_malformed_yaml_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yaml", "apiVersion: kondense.dev/v1alpha1\nspec: {targets: [\n  - a: b\n")
    result = validate(path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{path}:" in result.stderr and "malformed YAML" in result.stderr
    assert ":3:" in result.stderr or ":4:" in result.stderr  # a line number, not just the file


def test_wrong_api_version_and_kind(tmp_path: Path) -> None:
    body = copy.deepcopy(DIGITS)
    body["apiVersion"], body["kind"] = "kondense.dev/v1", "Deployment"
    result = validate(write(tmp_path, "wrong.yaml", yaml.safe_dump(body)))
    assert result.returncode == 1
    assert "apiVersion: must be 'kondense.dev/v1alpha1', got 'kondense.dev/v1'" in result.stderr
    assert "kind: must be 'CompressedModel', got 'Deployment'" in result.stderr


def test_unknown_fields_are_errors_with_their_path(tmp_path: Path) -> None:
    body = copy.deepcopy(DIGITS)
    body["spec"]["rollout"]["analysis"]["p99"] = {"max": 5}
    body["spec"]["servng"] = {}
    result = validate(write(tmp_path, "typo.yaml", yaml.safe_dump(body)))
    assert result.returncode == 1
    assert "spec.rollout.analysis.p99: unknown field" in result.stderr
    assert "spec.servng: unknown field" in result.stderr


def test_every_error_of_a_file_is_printed_not_just_the_first(tmp_path: Path) -> None:
    body = copy.deepcopy(DIGITS)
    body["spec"]["targets"][0]["params"]["calibrationSamples"] = 0
    body["spec"]["serving"]["replicas"] = 0
    body["spec"]["rollout"]["failureLimit"] = -1
    result = validate(write(tmp_path, "many.yaml", yaml.safe_dump(body)))
    assert "spec.targets[0].params.calibrationSamples: must be >= 1, got 0" in result.stderr
    assert "spec.serving.replicas: must be >= 1, got 0" in result.stderr
    assert "spec.rollout.failureLimit: must be >= 0, got -1" in result.stderr


def test_multi_document_files_name_the_document(tmp_path: Path) -> None:
    bad = copy.deepcopy(DIGITS)
    bad["spec"]["rollout"]["steps"] = [50, 100, 100]
    text = yaml.safe_dump(DIGITS) + "---\n" + yaml.safe_dump(bad)
    result = validate(write(tmp_path, "two.yaml", text))
    assert result.returncode == 1
    assert "(document 1): valid" in result.stdout
    assert "(document 2): spec.rollout.steps: must be strictly increasing (100 then 100)" in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no YAML document found"),
        ("- just\n- a list\n", "expected a mapping"),
        ("apiVersion: kondense.dev/v1alpha1\nkind: CompressedModel\n", "spec: required field is missing"),
    ],
)
def test_degenerate_documents(tmp_path: Path, text: str, message: str) -> None:
    result = validate(write(tmp_path, "x.yaml", text))
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_and_stdin(tmp_path: Path) -> None:
    result = validate(str(tmp_path / "nope.yaml"))
    assert result.returncode == 1 and "cannot read file" in result.stderr
    ok = validate("-", stdin=yaml.safe_dump(DIGITS))
    assert ok.returncode == 0 and "<stdin>: valid (digits)" in ok.stdout


# ------------------------------------------------------------------------------------------------
# The models and the CRD schema agree: what one accepts the other accepts (property-based).

NUMERIC: list[tuple[Technique, str]] = [
    (technique, name)
    for technique, model in PARAMS_BY_TECHNIQUE.items()
    for name, field in model.model_fields.items()
    if field.annotation in (int, float, int | None, float | None)
]


def _with_param(technique: Technique, name: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(DIGITS)
    body["spec"]["targets"] = [{"name": "t", "technique": technique.value, "params": {name: value}}]
    return body


@settings(max_examples=300, deadline=None)
@given(
    case=st.sampled_from(NUMERIC),
    value=st.one_of(
        st.integers(min_value=-5, max_value=2_000_000),
        st.floats(min_value=-2, max_value=200, allow_nan=False),
        st.sampled_from([0, 1, 0.0, 1.0, 1e-9, 100, 1000, 10000, 65536, 1_000_000]),
    ),
)
def test_models_and_crd_agree_on_numeric_params(case: tuple[Technique, str], value: float) -> None:
    technique, name = case
    field = PARAMS_BY_TECHNIQUE[technique].model_fields[name]
    if field.annotation in (int, int | None) and isinstance(value, float) and not value.is_integer():
        value = int(value)
    body = _with_param(technique, name, value)
    _, errors = validate_object(body)
    schema_errors = violations(body)
    assert bool(errors) == bool(schema_errors), (technique, name, value, errors, schema_errors)


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(st.integers(min_value=-5, max_value=120), min_size=0, max_size=22),
    interval=st.sampled_from(["500ms", "4s", "5s", "30s", "2m", "1h30m", "24h", "25h", "10", "1d"]),
    name=st.from_regex(r"[a-zA-Z0-9_-]{0,70}", fullmatch=True),
)
def test_models_and_crd_agree_on_rollout_and_names(steps: list[int], interval: str, name: str) -> None:
    body = copy.deepcopy(DIGITS)
    body["spec"]["rollout"]["steps"] = steps
    body["spec"]["rollout"]["interval"] = interval
    body["spec"]["targets"][0]["name"] = name
    _, errors = validate_object(body)
    assert bool(errors) == bool(violations(body)), (steps, interval, name, errors)

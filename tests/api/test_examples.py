"""Every example is valid; every file in examples/invalid/ is refused by the CRD schema (OpenAPI + CEL,
as the API server would) *and* by `kondense validate`, each naming the field it expects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kondense.api.validation import validate_object
from kondense_testing.crd_schema import violations
from kondense_testing.paths import EXAMPLES

VALID = sorted(p for p in EXAMPLES.glob("*/compressedmodel.yaml"))
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))


def _expected_path(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: FIELD.PATH'"
    return first.removeprefix("# expect: ").strip()


def kondense(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kondense.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_there_are_examples_for_every_rule_family() -> None:
    assert {p.parent.name for p in VALID} >= {"digits", "minilm", "digits-triton"}
    assert len(INVALID) >= 8


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.parent.name)
def test_example_is_valid_for_models_and_crd(path: Path) -> None:
    body = yaml.safe_load(path.read_text())
    model, errors = validate_object(body)
    assert errors == []
    assert model is not None
    assert violations(body) == []
    # the examples use the main features
    targets = model.spec.targets
    assert len(targets) >= 3
    assert any(len(t.pipeline()) > 1 for t in targets), "a pipeline target"
    analysis = model.spec.rollout.analysis
    assert analysis.p99LatencyMs and analysis.errorRate
    if model.spec.serving.runtime == "onnxruntime":
        assert analysis.accuracyDelta, "live accuracy gate"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_example_is_rejected_by_the_crd_schema(path: Path) -> None:
    body = yaml.safe_load(path.read_text())
    found = violations(body)
    expected = _expected_path(path)
    assert found, f"{path.name} passed the CRD schema"
    assert any(v.path.startswith(expected) for v in found), f"{expected} not in {found}"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_example_is_rejected_by_the_models(path: Path) -> None:
    _, errors = validate_object(yaml.safe_load(path.read_text()))
    expected = _expected_path(path)
    assert errors
    assert any(e.path.startswith(expected) for e in errors), f"{expected} not in {errors}"


def test_kondense_validate_cli_reports_each_invalid_file_with_its_field() -> None:
    result = kondense("validate", *map(str, INVALID))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    for path in INVALID:
        lines = [line for line in result.stderr.splitlines() if line.startswith(f"{path}: ")]
        assert lines, f"no error printed for {path.name}"
        assert any(f": {_expected_path(path)}" in line for line in lines), lines


def test_kondense_validate_cli_accepts_the_examples() -> None:
    result = kondense("validate", *map(str, VALID))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": valid") == len(VALID)

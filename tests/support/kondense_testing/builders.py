"""Small builders for operator tests: specs from the examples, job results, readings."""

from __future__ import annotations

import copy
import hashlib
from typing import Any, Literal

import yaml

from kondense.api.artifacts import ArtifactRef, JobResult, VariantMetrics
from kondense.api.resource import CompressedModelSpec
from kondense_testing.paths import EXAMPLES

DIGITS: dict[str, Any] = yaml.safe_load((EXAMPLES / "digits" / "compressedmodel.yaml").read_text())


def digits_body(**spec_overrides: Any) -> dict[str, Any]:
    body = copy.deepcopy(DIGITS)
    body["spec"].update(spec_overrides)
    return body


def digits_spec(**spec_overrides: Any) -> CompressedModelSpec:
    return CompressedModelSpec.model_validate(digits_body(**spec_overrides)["spec"])


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def job_result(
    name: str,
    *,
    delta: float = 0.0,
    size: float = 0.3,
    p50: float = 0.2,
    ok: bool = True,
    reason: Literal["Succeeded", "BudgetNotMet", "BadInput", "Error"] = "Succeeded",
) -> JobResult:
    return JobResult(
        name=name,
        ok=ok,
        reason=reason,
        artifact=ArtifactRef(sha256=sha(name), sizeBytes=1000),
        metrics=VariantMetrics(sizeRatio=size, p50Ms=p50, p99Ms=p50 * 2, accuracyDelta=delta),
        technique=name,
        hardware="Test CPU · int8 avx2 (avx2) · ORT 1.0 CPU",
    )

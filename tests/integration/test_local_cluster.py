"""The six scenarios of ``kondense demo`` on the embedded local cluster, through the demo's own code.

Everything is real but the control plane and the container runtime: the operator process, compression
Jobs, ``kondense serve`` pods behind loopback Services, Prometheus scraping them, the load generator
Job. Each scenario runs the quick profile of ``examples/digits`` (two fast targets, two replicas, two
5 s steps); afterwards every object in the local API validates against the official Kubernetes schemas
(and the CRD), and no process the cluster started is left. Select them with ``-m localcluster``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from kondense.localcluster.demo import LogDisplay
from kondense.localcluster.scenarios import SCENARIOS, Outcome, run_scenario
from kondense_testing import crd_schema
from kondense_testing.paths import EXAMPLES

pytestmark = [pytest.mark.localcluster, pytest.mark.slow, pytest.mark.timeout(420)]
KUBERNETES_VERSION = "1.33"


def invalid_objects(objects: list[dict[str, Any]]) -> list[str]:
    problems = []
    for obj in objects:
        where = f"{obj['kind']} {obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"
        if obj["kind"] == "CompressedModel":
            problems += [f"{where}: {v.path}: {v.message}" for v in crd_schema.violations(obj)]
        elif not obj["apiVersion"].startswith("gateway.networking.k8s.io"):
            try:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{where}: {exc.message}")
    return problems


def explain(outcome: Outcome, display: LogDisplay) -> str:
    operator_log = (outcome.workdir / "logs" / "operator.log").read_text(errors="replace")[-3000:]
    return "\n".join([
        f"{outcome.scenario}: {outcome.phase} (expected {outcome.expected_phase}); problems: {outcome.problems}",
        f"leftover processes: {outcome.leftover_processes}", *display.lines, "operator log tail:", operator_log,
    ])  # fmt: skip


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario(scenario: str, digits_example: Path, tmp_path: Path) -> None:  # tests/conftest.py
    display = LogDisplay()
    outcome = run_scenario(
        SCENARIOS[scenario], tmp_path / "cluster", digits_example, EXAMPLES / "digits" / "compressedmodel.yaml",
        display, quick=True, timeout_s=300,
    )  # fmt: skip
    assert outcome.ok, explain(outcome, display)
    objects = json.loads((outcome.workdir / "objects.json").read_text())
    kinds = {o["kind"] for o in objects}
    assert {"Job", "Pod", "Deployment", "Service", "Event", "CompressedModel"} <= kinds
    assert invalid_objects(objects) == []
    assert outcome.leftover_processes == []

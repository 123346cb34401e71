"""The six scenarios of ``kondense demo`` on the embedded local cluster, through the demo's own code.

Everything is real but the control plane and the container runtime: the operator process, compression
Jobs, ``kondense serve`` pods behind loopback Services, Prometheus scraping them, the load generator
Job. Each scenario runs the quick profile of ``examples/digits`` (two fast targets, two replicas, two
5 s steps); afterwards every object in the local API validates against the official Kubernetes schemas
(and the CRD), and no process the cluster started is left. Select them with ``-m localcluster``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from kondense.localcluster.demo import LogDisplay
from kondense.localcluster.scenarios import EXAMPLE_FILES, SCENARIOS, Outcome, run_scenario
from kondense_testing import crd_schema
from kondense_testing.paths import EXAMPLES

pytestmark = [pytest.mark.localcluster, pytest.mark.slow, pytest.mark.timeout(420)]
KUBERNETES_VERSION = "1.33"
BIN = Path(sys.executable).parent

# Temporary stand-in for `kondense-compress --baseline` (the lead is adding it): copies the base model,
# writes its manifest with the real sha256 and the JobResult. Used only while the real command lacks
# the flag; every other invocation goes to the real kondense-compress.
BASELINE_STAND_IN = f"""#!{sys.executable}
import argparse, os, shutil, sys
from pathlib import Path
if "--baseline" not in sys.argv:
    os.execv({str(BIN / "kondense-compress")!r}, [{str(BIN / "kondense-compress")!r}, *sys.argv[1:]])
from kondense.api.artifacts import ArtifactRef, JobResult, Manifest, VariantMetrics, sha256_file
parser = argparse.ArgumentParser()
for flag in ("--model", "--eval", "--task", "--output", "--pvc-root", "--termination-log", "--calibration", "--train"):
    parser.add_argument(flag)
parser.add_argument("--baseline", action="store_true")
args = parser.parse_args()
local = lambda uri: Path(args.pvc_root) / uri[len("pvc://"):] if uri.startswith("pvc://") else Path(uri.removeprefix("file://"))
out = local(args.output)
out.mkdir(parents=True, exist_ok=True)
shutil.copy2(local(args.model), out / "model.onnx")
ref = ArtifactRef(sha256=sha256_file(out / "model.onnx"), sizeBytes=(out / "model.onnx").stat().st_size)
metrics = VariantMetrics(sizeRatio=1.0, accuracyDelta=0.0)
(out / "manifest.json").write_text(Manifest(name="base", task=args.task, base=ref, artifact=ref, metrics=metrics).model_dump_json())
result = JobResult(name="base", ok=True, reason="Succeeded", artifact=ref, metrics=metrics, technique="baseline")
Path(args.termination_log).write_text(result.model_dump_json(exclude_none=True))
"""


@pytest.fixture(scope="module")
def digits_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits example, built once for every scenario with the real command."""
    out = tmp_path_factory.mktemp("digits")
    subprocess.run(
        [str(BIN / "kondense"), "example", "digits", "--out", str(out)], check=True, capture_output=True
    )
    assert all((out / name).is_file() for name in EXAMPLE_FILES)
    return out


@pytest.fixture(scope="module")
def command_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ...]:
    help_text = subprocess.run(
        [str(BIN / "kondense-compress"), "--help"], capture_output=True, text=True
    ).stdout
    if "--baseline" in help_text:
        return ()
    directory = tmp_path_factory.mktemp("bin")
    script = directory / "kondense-compress"
    script.write_text(BASELINE_STAND_IN)
    script.chmod(0o755)
    return (str(directory),)


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
def test_scenario(scenario: str, digits_example: Path, command_dirs: tuple[str, ...], tmp_path: Path) -> None:
    display = LogDisplay()
    outcome = run_scenario(
        SCENARIOS[scenario], tmp_path / "cluster", digits_example, EXAMPLES / "digits" / "compressedmodel.yaml",
        display, quick=True, timeout_s=300, bin_dirs=command_dirs,
    )  # fmt: skip
    assert outcome.ok, explain(outcome, display)
    objects = json.loads((outcome.workdir / "objects.json").read_text())
    kinds = {o["kind"] for o in objects}
    assert {"Job", "Pod", "Deployment", "Service", "Event", "CompressedModel"} <= kinds
    assert invalid_objects(objects) == []
    assert outcome.leftover_processes == []

"""Run a target (one technique or a chain of steps) on a base ONNX model and write the variant.

``compress_model`` is the public entry point used by the CLI, the Job and the operator's demo. The
output directory receives ``model.onnx`` and ``manifest.json`` all at once (staged next to it, then
renamed), so a failed or interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pydantic

from kondense.api.artifacts import (
    MANIFEST_FILE,
    MODEL_FILE,
    ArtifactRef,
    Gate,
    Manifest,
    ManifestStep,
    Trial,
    sha256_file,
)
from kondense.api.techniques import TECHNIQUES_NEEDING_CALIBRATION, Task, Technique, params_for
from kondense.compression.backoff import fit_budget
from kondense.compression.data import Dataset, load_for_model
from kondense.compression.errors import BadInputError, UnsupportedModelError
from kondense.compression.evaluation import Reference, evaluate_variant
from kondense.compression.intake import normalise, ort_reason
from kondense.compression.integrity import digest_of, external_data_files, model_bytes
from kondense.compression.model_files import load_model, open_session, signature_of
from kondense.compression.passes import PassContext, ProgressReporter, SilentProgress, pass_for

TOOL_PACKAGES = ("onnx", "onnxruntime", "numpy", "torch", "torch-pruning", "onnxconverter-common")
TARGET_NAME_MAX = 63


MAX_GROWTH = 1.5
MAX_GROWTH_BYTES = 64 * 1024
"""A variant over MAX_GROWTH times the base's size and more than MAX_GROWTH_BYTES larger is refused, not
evaluated, naming the usual cause (weights the base computes at run time, stored once folded). From a
base of MAX_GROWTH_BYTES up, any variant larger than its base is refused (unless unstructured pruning,
which keeps the size by design): that is no compression. Under it (test-sized graphs) a variant may
grow by a few hundred bytes of casts or quantization parameters and is still evaluated."""


@dataclass(frozen=True)
class Step:
    technique: Technique
    params: dict[str, Any]  # validated and with defaults filled in


@dataclass(frozen=True)
class TargetSpec:
    name: str
    steps: tuple[Step, ...]
    max_accuracy_delta: float | None = None

    @property
    def technique_label(self) -> str:
        return "+".join(step.technique.value for step in self.steps)


def keeps_size(spec: TargetSpec) -> bool:
    """A target whose variant is meant to keep the base's size: unstructured pruning zeroes weights
    in place (dense ONNX files do not shrink; a sparse-aware runtime benefits)."""
    return any(
        step.technique is Technique.PRUNE and not step.params.get("structured", False) for step in spec.steps
    )


def parse_target(raw: Mapping[str, Any], where: str = "target") -> TargetSpec:
    """Validate a target exactly as written in the CR (``technique``+``params`` or ``steps``)."""
    if not isinstance(raw, Mapping):
        raise BadInputError(where, f"must be an object, got {type(raw).__name__}")
    allowed = {"name", "technique", "params", "steps", "maxAccuracyDelta"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise BadInputError(where, f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name or len(name) > TARGET_NAME_MAX:
        raise BadInputError(
            f"{where}.name", f"must be a non-empty string of at most {TARGET_NAME_MAX} characters"
        )
    if ("technique" in raw) == ("steps" in raw):
        raise BadInputError(where, "give exactly one of 'technique' (with optional 'params') or 'steps'")
    if "steps" in raw:
        if "params" in raw:
            raise BadInputError(f"{where}.params", "params belong inside each step when 'steps' is used")
        raw_steps = raw["steps"]
        if not isinstance(raw_steps, list) or not raw_steps:
            raise BadInputError(f"{where}.steps", "must be a non-empty list")
        items = [(f"{where}.steps[{i}]", s) for i, s in enumerate(raw_steps)]
    else:
        items = [(where, {"technique": raw["technique"], "params": raw.get("params")})]
    steps = []
    for item_where, item in items:
        if not isinstance(item, Mapping) or set(item) - {"technique", "params"}:
            raise BadInputError(item_where, "each step is an object with 'technique' and optional 'params'")
        technique = item.get("technique")
        try:
            tech = Technique(str(technique))
        except ValueError:
            raise BadInputError(
                f"{item_where}.technique",
                f"unknown technique {technique!r}; known: {[t.value for t in Technique]}",
            ) from None
        params = item.get("params") or {}
        if not isinstance(params, Mapping):
            raise BadInputError(f"{item_where}.params", "must be an object")
        try:
            validated = params_for(tech, dict(params))
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(params)'}: {e['msg']}" for e in exc.errors()
            )
            raise BadInputError(f"{item_where}.params", problems) from None
        steps.append(Step(tech, validated.model_dump(mode="json")))
    budget = raw.get("maxAccuracyDelta")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | float) or budget < 0):
        raise BadInputError(f"{where}.maxAccuracyDelta", f"must be a number >= 0, got {budget!r}")
    return TargetSpec(name, tuple(steps), None if budget is None else float(budget))


@dataclass
class DataFiles:
    """Paths of the data sets (already local). ``train`` defaults to ``calibration``."""

    evaluation: Path
    calibration: Path | None = None
    train: Path | None = None
    uris: dict[str, str] = field(default_factory=dict)  # as given by the user, for the manifest


def tool_versions() -> dict[str, str]:
    versions = {}
    for name in ("kondense", *TOOL_PACKAGES):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _needs(steps: tuple[Step, ...]) -> tuple[bool, bool]:
    """(needs calibration data, needs training data)."""
    calibration = any(s.technique in TECHNIQUES_NEEDING_CALIBRATION for s in steps)
    train = any(
        s.technique is Technique.DISTILL
        or (s.technique in (Technique.PRUNE, Technique.LOW_RANK) and s.params.get("fineTuneEpochs", 0) > 0)
        for s in steps
    )
    return calibration, train


def install_output(stage: Path, output_dir: Path) -> None:
    """Move the staged files into ``output_dir``; the manifest goes last so its presence means done."""
    if output_dir.exists() and not output_dir.is_dir():
        raise BadInputError(str(output_dir), "output exists and is not a directory")
    if output_dir.is_dir():
        leftovers = sorted(p.name for p in output_dir.iterdir() if p.name not in (MODEL_FILE, MANIFEST_FILE))
        if leftovers:
            raise BadInputError(
                str(output_dir), f"output directory holds other files {leftovers[:5]}; refusing to mix"
            )
        if not any(output_dir.iterdir()):
            output_dir.rmdir()
    if not output_dir.exists():
        os.replace(stage, output_dir)  # one atomic rename of the whole directory
        return
    (output_dir / MANIFEST_FILE).unlink(missing_ok=True)  # an old manifest must never describe the new model
    for staged in sorted(stage.iterdir()):  # the model and any external data, then the manifest
        if staged.name != MANIFEST_FILE:
            os.replace(staged, output_dir / staged.name)
    os.replace(stage / MANIFEST_FILE, output_dir / MANIFEST_FILE)


def compress_model(
    model_path: str | Path,
    target: TargetSpec | Mapping[str, Any],
    data: DataFiles,
    output_dir: str | Path,
    *,
    task: Task | str = Task.CLASSIFICATION,
    max_accuracy_delta: float | None = None,
    model_uri: str | None = None,
    output_uri: str | None = None,
    threads: int = 1,
    latency_runs: int = 200,
    progress: ProgressReporter | None = None,
) -> Manifest:
    """Compress ``model_path`` as ``target`` says, evaluate against the base, write the output.

    The budget is the target's own ``maxAccuracyDelta`` if set, else ``max_accuracy_delta``. The
    returned manifest's ``gate.passed`` says whether the variant is within it; the artifact is
    written either way.
    """
    spec = target if isinstance(target, TargetSpec) else parse_target(target)
    task = Task(task)
    budget = spec.max_accuracy_delta if spec.max_accuracy_delta is not None else max_accuracy_delta
    progress = progress or SilentProgress()
    model_path, output_dir = Path(model_path), Path(output_dir)

    base_model = load_model(model_path)
    signature = signature_of(base_model)
    del base_model
    try:
        open_session(model_path, threads=threads)
        cannot_load: BadInputError | None = None
    except BadInputError as exc:  # e.g. an opset-6 Gemm: intake's opset-13 copy may still run
        cannot_load = exc
    needs_calibration, needs_train = _needs(spec.steps)
    evaluation = load_for_model(data.evaluation, signature)
    calibration = load_for_model(data.calibration, signature) if data.calibration else None
    train = load_for_model(data.train, signature) if data.train else calibration
    if needs_calibration and calibration is None:
        raise BadInputError(
            "calibration", f"target {spec.name!r} uses static-int8, which needs calibration data"
        )
    if needs_train and train is None:
        raise BadInputError(
            "train", f"target {spec.name!r} trains a model and needs training (or calibration) data"
        )
    if task is Task.CLASSIFICATION and evaluation.labels is not None:
        out_shape = signature.outputs[0].shape
        classes = out_shape[-1] if out_shape else None
        if evaluation.labels.dtype.kind not in "iu" or (classes and int(evaluation.labels.max()) >= classes):
            raise BadInputError(
                f"{evaluation.source}[labels]",
                f"must be integer class indices below {classes} for classification",
            )

    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        workspace = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    except OSError as exc:
        raise BadInputError(
            str(output_dir), f"cannot write next to the output directory: {exc.strerror or exc}"
        ) from exc
    try:
        work, stage = workspace / "work", workspace / "stage"
        work.mkdir()
        stage.mkdir()
        # Intake normalises the base once (opset, Constant folding, shapes); passes read its output,
        # while the reference, the size ratio and the recorded base stay the user's original file.
        intake = normalise(model_path, workspace / "intake", sample=evaluation.sample(0))
        reference_path = model_path
        if cannot_load is not None:  # the reference runs intake's copy (it loads: intake checked)
            if intake.path == model_path:
                raise cannot_load
            reference_path = intake.path
            intake.notes.append(
                f"ONNX Runtime cannot load the original ({cannot_load.problem}); the reference outputs "
                "and latencies are those of intake's normalised copy, sizes stay relative to the original"
            )
        try:
            reference = Reference.compute(
                reference_path, evaluation, task, threads=threads, size_path=model_path
            )
        except BadInputError:
            raise
        except Exception as exc:  # ORT's run-time errors (a kernel that rejects the shapes it is given)
            copy = " (intake's normalised copy, as ONNX Runtime cannot load the original)"
            raise BadInputError(
                str(model_path),
                f"ONNX Runtime cannot run the model{copy if reference_path != model_path else ''} on "
                f"{evaluation.source}: {ort_reason(exc)}",
            ) from exc

        def attempt(candidate: TargetSpec, directory: Path) -> Manifest:
            (directory / "work").mkdir()
            (directory / "stage").mkdir()
            return _run_steps(
                candidate,
                intake.path,
                reference,
                calibration,
                train,
                directory / "work",
                directory / "stage",
                task,
                budget,
                threads,
                latency_runs,
                progress,
            )

        try:  # backs off a step that misses the budget
            manifest = fit_budget(spec, budget, attempt, work, stage)
        except BadInputError as exc:  # a pass names the file it read: say the user's model instead
            raise in_user_terms(exc, workspace, model_path) from exc
        base_external = external_data_files(model_path)
        manifest.base = ArtifactRef(
            uri=model_uri or model_path.resolve().as_uri(),
            sha256=digest_of(model_path, base_external, str(model_path)),
            sizeBytes=model_bytes(model_path),
            externalData=base_external,
        )
        manifest.data = {  # type: ignore[attr-defined]  # provenance of the data, extra field
            role: {"uri": data.uris.get(role, Path(path).resolve().as_uri()), "sha256": sha256_file(path)}
            for role, path in (
                ("evaluation", data.evaluation),
                ("calibration", data.calibration),
                ("train", data.train),
            )
            if path is not None
        }
        manifest.artifact.uri = output_uri
        manifest.intake = intake.record()  # type: ignore[attr-defined]  # extra field
        (stage / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2, exclude_none=True) + "\n")
        install_output(stage, output_dir)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    return manifest


def in_user_terms(exc: BadInputError, workspace: Path, model_path: Path) -> BadInputError:
    """``exc`` with every path inside the run's ``workspace`` (intake's copy, a step's output)
    replaced by the user's model path: a refusal names the user's file, never a temporary one."""
    roots = sorted({str(workspace), str(workspace.resolve())}, key=len, reverse=True)
    pattern = re.compile("(?:" + "|".join(map(re.escape, roots)) + r")[^\s:,;'\")]*")
    where, problem = pattern.sub(str(model_path), exc.where), pattern.sub(str(model_path), exc.problem)
    if (where, problem) == (exc.where, exc.problem):
        return exc
    return type(exc)(where, problem)


def _run_steps(
    spec: TargetSpec,
    model_path: Path,
    reference: Reference,
    calibration: Dataset | None,
    train: Dataset | None,
    work: Path,
    stage: Path,
    task: Task,
    budget: float | None,
    threads: int,
    latency_runs: int,
    progress: ProgressReporter,
) -> Manifest:
    current = model_path
    steps: list[ManifestStep] = []
    trials: list[Trial] = []
    for index, step in enumerate(spec.steps):
        step_dir = work / f"step-{index}"
        step_dir.mkdir()
        destination = step_dir / "out.onnx"
        context = PassContext(
            task=task,
            calibration=calibration,
            train=train,
            reference=reference,
            work_dir=step_dir,
            max_accuracy_delta=budget,
            threads=threads,
            progress=progress,
        )
        result = pass_for(step.technique, step.params).run(current, destination, context)
        if not destination.is_file():
            raise RuntimeError(f"pass {step.technique} wrote no model")
        for trial in result.trials:
            trial.step = index  # type: ignore[attr-defined]  # extra field: which step tried it
        trials.extend(result.trials)
        steps.append(ManifestStep(technique=step.technique, params=step.params, details=result.details))
        current = destination

    final = stage / MODEL_FILE
    external = external_data_files(current)  # tensors a pass kept beside its output go with it
    for name in external:
        (stage / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(current.parent / name, stage / name)
    shutil.move(current, final)
    grown, variant_bytes = reference.size_ratio_of(final), model_bytes(final)
    sizes = f"({variant_bytes} vs {reference.base_bytes} bytes)"
    if grown > MAX_GROWTH and variant_bytes - reference.base_bytes > MAX_GROWTH_BYTES:
        # e.g. weights the base computes at run time (ConstantOfShape fills) stored once folded
        made = (
            f"a variant {grown:.3g}x the base's size {sizes}: nothing to gain (weights the base computes at "
            "run time are stored in the variant; try another technique)"
        )
    elif grown > 1.0 and reference.base_bytes >= MAX_GROWTH_BYTES and not keeps_size(spec):
        made = (
            f"a variant larger than the base {sizes}: what it adds (quantization parameters, conversion "
            "nodes, factor pairs) outweighs what it saves on this model's weights; nothing to gain"
        )
    else:
        made = ""
    if made:
        chain = " -> ".join(step.technique for step in spec.steps)
        raise UnsupportedModelError(
            str(reference.size_path or reference.base_path),  # the user's model, never intake's copy
            f"target {spec.name!r}: {chain} made {made}",
        )
    progress.start("evaluating variant against base (interleaved)", total=None)
    metrics, details = evaluate_variant(reference, final, latency_runs=latency_runs, threads=threads)
    progress.finish()
    passed = budget is None or (metrics.accuracyDelta is not None and metrics.accuracyDelta <= budget)
    manifest = Manifest(
        name=spec.name,
        task=task,
        base=ArtifactRef(sha256="0" * 64, sizeBytes=0),  # filled in by the caller
        artifact=ArtifactRef(
            sha256=digest_of(final, external, str(final)),
            sizeBytes=model_bytes(final),
            externalData=external,
        ),
        steps=steps,
        tools=tool_versions(),
        metrics=metrics,
        trials=trials,
        gate=Gate(maxAccuracyDelta=budget, passed=passed),
        createdAt=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    manifest.evaluation = details  # type: ignore[attr-defined]  # extra field
    return manifest

"""``kondense-compress``: the entrypoint of a compression Job.

Reads one target (JSON, as in the CR) and model/data URIs, writes ``model.onnx`` + ``manifest.json``
to the output, and a compact ``JobResult`` (< 4 KiB) to the termination log, which the operator reads
from the pod status.

Exit codes: 0 ok, 1 other failure, 2 bad input, 3 accuracy budget not met (artifact written, gate
failed).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kondense.api.artifacts import MODEL_FILE, TERMINATION_LOG_LIMIT, JobResult, Manifest
from kondense.api.techniques import Task
from kondense.compression.errors import BadInputError

if TYPE_CHECKING:
    from kondense.compression.uris import UriResolver

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_BUDGET_NOT_MET = 0, 1, 2, 3
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
REASON_EXIT = {
    "Succeeded": EXIT_OK,
    "Error": EXIT_ERROR,
    "BadInput": EXIT_BAD_INPUT,
    "BudgetNotMet": EXIT_BUDGET_NOT_MET,
}


def read_target_argument(text: str) -> dict[str, Any]:
    """``--target``: inline JSON, or ``@path`` to a JSON (or YAML) file."""
    where = "--target"
    if text.startswith("@"):
        path = Path(text[1:])
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise BadInputError(where, f"cannot read target file: {exc.strerror or exc}") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        import yaml

        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise BadInputError(where, f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise BadInputError(where, "the target must be a JSON object")
    return value


def termination_message(result: JobResult, limit: int = TERMINATION_LOG_LIMIT) -> str:
    """Compact JSON under ``limit`` bytes; the free-text message is shortened first if needed."""
    text = result.model_dump_json(exclude_none=True)
    if len(text.encode()) < limit:
        return text
    overflow = len(text.encode()) - limit + 16
    message = (result.message or "")[: max(0, len(result.message or "") - overflow)] + "…"
    text = result.model_copy(update={"message": message}).model_dump_json(exclude_none=True)
    if len(text.encode()) >= limit:  # pathological: drop everything optional
        text = JobResult(name=result.name[:63], ok=result.ok, reason=result.reason).model_dump_json()
    return text


def write_termination_log(path: str, result: JobResult) -> None:
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(termination_message(result))
    except OSError as exc:
        print(f"warning: cannot write termination log {path}: {exc}", file=sys.stderr)


def refuse_non_empty_output(output_dir: Path, output: str) -> None:
    """A Job never writes into an artifact directory that already holds something: each run gets
    its own, so an artifact being served can never be rewritten under it."""
    if output_dir.exists() and not output_dir.is_dir():
        raise BadInputError("--output", f"{output} exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        raise BadInputError(
            "--output",
            f"{output} is not empty; a compression Job never writes into a non-empty artifact "
            "directory (each run gets a new one)",
        )


def run_job(
    target_text: str | None,
    model_uri: str,
    eval_uri: str,
    output: str,
    *,
    model_sha256: str | None = None,
    calibration_uri: str | None = None,
    train_uri: str | None = None,
    task: str = Task.CLASSIFICATION.value,
    max_accuracy_delta: float | None = None,
    pvc_root: Path | None = None,
    threads: int = 1,
    latency_runs: int = 200,
    output_dir: str | None = None,
) -> JobResult:
    """Do the Job's work; every failure becomes a JobResult instead of an exception.

    Without a target (``--baseline``) the base model itself is checked, copied to the output with
    its manifest and evaluated: the artifact the operator's stable track serves first.
    """
    from kondense.compression.integrity import check_base_pin, check_sha256_argument
    from kondense.compression.pipeline import DataFiles, compress_model, parse_target

    name = "unknown"
    try:
        model_sha256 = check_sha256_argument(model_sha256)
        if target_text is None:
            return _run_baseline(
                model_uri, eval_uri, output, task, pvc_root, threads, latency_runs, model_sha256, output_dir
            )
        raw = read_target_argument(target_text)
        name = str(raw.get("name") or name)[:63]
        spec = parse_target(raw)
        try:
            task_value = Task(task)
        except ValueError:
            raise BadInputError(
                "--task", f"unknown task {task!r}; known: {[t.value for t in Task]}"
            ) from None
        with tempfile.TemporaryDirectory(prefix="kondense-download-") as downloads:
            resolver = _resolver(pvc_root, Path(downloads))
            write_to = _output_directory(resolver, output, output_dir)
            refuse_non_empty_output(write_to, output)
            model = resolver.fetch(model_uri, "--model")
            check_base_pin(model, model_sha256, model_uri)  # before anything reads the model
            uris = {"evaluation": eval_uri}
            data = DataFiles(evaluation=resolver.fetch(eval_uri, "--eval"), uris=uris)
            if calibration_uri:
                data.calibration = resolver.fetch(calibration_uri, "--calibration")
                uris["calibration"] = calibration_uri
            if train_uri:
                data.train = resolver.fetch(train_uri, "--train")
                uris["train"] = train_uri
            output_uri = output if "://" in output else write_to.resolve().as_uri()
            manifest = compress_model(
                model,
                spec,
                data,
                write_to,
                task=task_value,
                max_accuracy_delta=max_accuracy_delta,
                model_uri=model_uri,
                output_uri=f"{output_uri.rstrip('/')}/{MODEL_FILE}",
                threads=threads,
                latency_runs=latency_runs,
            )
    except BadInputError as exc:
        return JobResult(name=name, ok=False, reason="BadInput", message=str(exc))
    except Exception as exc:
        return JobResult(name=name, ok=False, reason="Error", message=f"{type(exc).__name__}: {exc}")

    metrics, gate = manifest.metrics, manifest.gate
    passed = gate is None or gate.passed
    budget = gate.maxAccuracyDelta if gate else None
    summary = f"sizeRatio {metrics.sizeRatio:.4f}, accuracyDelta {metrics.accuracyDelta:.5f}" + (
        f" (budget {budget})" if budget is not None else ""
    )
    if not passed:
        summary = f"accuracy budget not met: {summary}; best of {len(manifest.trials)} trial(s) kept"
    return JobResult(
        name=manifest.name,
        ok=passed,
        reason="Succeeded" if passed else "BudgetNotMet",
        message=summary,
        artifact=manifest.artifact,
        metrics=metrics,
        technique=spec.technique_label,
        trials=len(manifest.trials),
        hardware=hardware_summary(manifest),
    )


def _output_directory(resolver: UriResolver, output: str, output_dir: str | None) -> Path:
    """Where the artifact is written: ``--output-dir`` when given (the Job's own mounted directory;
    ``--output`` is then only the URI recorded), else where ``--output`` points."""
    return Path(output_dir) if output_dir else Path(resolver.local_path(output, "--output"))


def hardware_summary(manifest: Manifest) -> str | None:
    """The short evaluation-hardware line the operator shows in status (from the manifest)."""
    record = (getattr(manifest, "evaluation", None) or {}).get("hardware")
    return str(record["summary"])[:160] if isinstance(record, dict) and record.get("summary") else None


def _resolver(pvc_root: Path | None, downloads: Path) -> UriResolver:
    from kondense.compression.uris import UriResolver

    if pvc_root is None:  # the resolver's default: $KONDENSE_PVC_ROOT or /mnt/pvc
        return UriResolver(download_dir=downloads)
    return UriResolver(pvc_root=pvc_root, download_dir=downloads)


def _run_baseline(
    model_uri: str,
    eval_uri: str,
    output: str,
    task: str,
    pvc_root: Path | None,
    threads: int,
    latency_runs: int,
    model_sha256: str | None = None,
    output_dir: str | None = None,
) -> JobResult:
    from kondense.compression.baseline import BASELINE_NAME, prepare_baseline
    from kondense.compression.integrity import check_base_pin

    try:
        task_value = Task(task)
    except ValueError:
        raise BadInputError("--task", f"unknown task {task!r}; known: {[t.value for t in Task]}") from None
    with tempfile.TemporaryDirectory(prefix="kondense-download-") as downloads:
        resolver = _resolver(pvc_root, Path(downloads))
        write_to = _output_directory(resolver, output, output_dir)
        refuse_non_empty_output(write_to, output)
        output_uri = output if "://" in output else write_to.resolve().as_uri()
        model = resolver.fetch(model_uri, "--model")
        check_base_pin(model, model_sha256, model_uri)  # before anything reads the model
        manifest = prepare_baseline(
            model,
            resolver.fetch(eval_uri, "--eval"),
            write_to,
            task=task_value,
            model_uri=model_uri,
            output_uri=f"{output_uri.rstrip('/')}/{MODEL_FILE}",
            threads=threads,
            latency_runs=latency_runs,
        )
    metrics = manifest.metrics
    return JobResult(
        name=BASELINE_NAME,
        ok=True,
        reason="Succeeded",
        message=f"base model ready: p50 {metrics.p50Ms:.3f} ms, p99 {metrics.p99Ms:.3f} ms at batch 1",
        artifact=manifest.artifact,
        metrics=metrics,
        technique="baseline",
        hardware=hardware_summary(manifest),
    )


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__)


@app.command()
def compress_job(
    model: Annotated[str, typer.Option(help="Base model URI: file://, pvc://claim/path, http(s)://.")],
    eval: Annotated[str, typer.Option("--eval", help="Evaluation data (.npz) URI.")],
    output: Annotated[str, typer.Option(help="Output directory (path, file:// or pvc:// URI).")],
    output_dir: Annotated[
        str | None,
        typer.Option(
            help="Write here instead (the Job's own mounted directory); --output is then the URI recorded."
        ),
    ] = None,
    calibration: Annotated[str | None, typer.Option(help="Calibration data (.npz) URI.")] = None,
    train: Annotated[str | None, typer.Option(help="Training data URI (default: calibration).")] = None,
    task: Annotated[str, typer.Option(help="classification | embedding | regression.")] = "classification",
    max_accuracy_delta: Annotated[
        float | None, typer.Option(help="Budget unless the target sets its own.")
    ] = None,
    termination_log: Annotated[
        str, typer.Option(help="Where the JobResult JSON goes.")
    ] = DEFAULT_TERMINATION_LOG,
    pvc_root: Annotated[
        Path | None, typer.Option(envvar="KONDENSE_PVC_ROOT", help="Where pvc://<claim>/ is mounted.")
    ] = None,
    threads: Annotated[int, typer.Option(min=1, max=64, help="ORT threads for latency measurement.")] = 1,
    latency_runs: Annotated[int, typer.Option(min=10, max=100000, help="Timed runs per model.")] = 200,
    target: Annotated[str | None, typer.Option(help="Target as JSON (as in the CR), or @file.")] = None,
    baseline: Annotated[
        bool, typer.Option("--baseline", help="No target: prepare the base model itself for serving.")
    ] = False,
    model_sha256: Annotated[
        str | None,
        typer.Option(
            "--model-sha256",
            help="Pin (spec.baseModel.sha256): refuse a base model whose digest (model file plus its "
            "external data) differs, before reading it.",
        ),
    ] = None,
) -> None:
    if (target is None) == (not baseline):
        result = JobResult(
            name="unknown",
            ok=False,
            reason="BadInput",
            message="give either --target or --baseline (not both)",
        )
        write_termination_log(termination_log, result)
        print(f"{result.reason}: {result.message}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD_INPUT)
    result = run_job(
        target,
        model,
        eval,
        output,
        model_sha256=model_sha256,
        calibration_uri=calibration,
        train_uri=train,
        task=task,
        max_accuracy_delta=max_accuracy_delta,
        pvc_root=pvc_root,
        threads=threads,
        latency_runs=latency_runs,
        output_dir=output_dir,
    )
    write_termination_log(termination_log, result)
    print(termination_message(result))
    if not result.ok:
        print(f"{result.reason}: {result.message}", file=sys.stderr)
    raise typer.Exit(REASON_EXIT[result.reason])


def termination_log_argument(argv: list[str]) -> str:
    """The --termination-log value when the command line itself could not be parsed."""
    for i, arg in enumerate(argv):
        if arg.startswith("--termination-log="):
            return arg.split("=", 1)[1]
        if arg == "--termination-log" and i + 1 < len(argv):
            return argv[i + 1]
    return DEFAULT_TERMINATION_LOG


def main() -> None:
    from typer.exceptions import TyperException

    try:
        code = app(standalone_mode=False)
    except TyperException as exc:  # a missing or malformed option: still tell the operator
        exc.show()  # type: ignore[attr-defined]  # click's UsageError API, vendored by typer
        message = f"command line: {exc.format_message()}"
        write_termination_log(
            termination_log_argument(sys.argv[1:]),
            JobResult(name="unknown", ok=False, reason="BadInput", message=message),
        )
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()

"""``kondense compress``, ``kondense report``, ``kondense inspect`` and ``kondense example`` (registered into the one
``kondense`` console script). Heavy libraries are imported inside the commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kondense.api.techniques import Task, Technique
from kondense.compression.errors import BadInputError
from kondense.compression.job import EXIT_BAD_INPUT, EXIT_BUDGET_NOT_MET, EXIT_ERROR

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID


class RichProgress:
    """ProgressReporter on a rich progress bar (stderr, so ``--json`` stdout stays clean)."""

    def __init__(self, enabled: bool = True) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, description: str, total: int | None = None) -> None:
        self.finish()
        self._task = self._progress.add_task(description, total=total)

    def advance(self, amount: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)

    def finish(self) -> None:
        if self._task is not None:
            task = self._progress.tasks[-1]
            self._progress.update(
                self._task, completed=task.total if task.total is not None else 1, total=task.total or 1
            )
            self._task = None


def parse_param(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (so ``true``, ``0.5`` and ``[64, 32]`` get their types)."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise BadInputError("--param", f"expected key=value, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise BadInputError(f"--param {key}", f"cannot parse value {raw!r}: {exc}") from exc


def read_spec_target(path: Path, name: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A target from a YAML/JSON file holding one target, a ``targets`` list, or a CompressedModel.

    Returns (target, defaults) where defaults may carry ``task`` and ``maxAccuracyDelta`` from a CR.
    """
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInputError(str(path), f"cannot read spec: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise BadInputError(str(path), f"not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise BadInputError(str(path), "expected a mapping (a target, a 'targets' list or a CompressedModel)")
    defaults: dict[str, Any] = {}
    spec: dict[str, Any] = document["spec"] if isinstance(document.get("spec"), dict) else document
    if "targets" in spec:
        targets = spec["targets"]
        if isinstance(spec.get("task"), str):
            defaults["task"] = spec["task"]
        selection = spec.get("selection") or {}
        if isinstance(selection, dict) and selection.get("maxAccuracyDelta") is not None:
            defaults["maxAccuracyDelta"] = selection["maxAccuracyDelta"]
        if not isinstance(targets, list) or not targets:
            raise BadInputError(f"{path}: targets", "must be a non-empty list")
        names = [t.get("name") for t in targets if isinstance(t, dict)]
        if name is None and len(targets) > 1:
            raise BadInputError(str(path), f"holds several targets {names}; choose one with --target")
        picked = (
            targets[0]
            if name is None
            else next((t for t in targets if isinstance(t, dict) and t.get("name") == name), None)
        )
        if picked is None:
            raise BadInputError(str(path), f"no target named {name!r}; targets: {names}")
        return picked, defaults
    return document, defaults


def stdout_console() -> Console:
    """Rich console for results; pipes get a wide one so tables are not squeezed to 80 columns."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def _fail(exc: BadInputError) -> typer.Exit:
    print(f"error: {exc}", file=sys.stderr)
    return typer.Exit(EXIT_BAD_INPUT)


def result_table(rows: list[dict[str, Any]], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for column in rows[0]:
        table.add_column(column, justify="left" if column in ("name", "technique", "gate") else "right")
    for row in rows:
        table.add_row(*[str(v) for v in row.values()])
    return table


def register(app: typer.Typer) -> None:
    example_app = typer.Typer(help="Build example base models and data sets (offline).", no_args_is_help=True)
    app.add_typer(example_app, name="example")

    @app.command()
    def compress(
        model: Annotated[Path, typer.Argument(help="Base ONNX model.")],
        technique: Annotated[
            Technique | None, typer.Option(help="One technique (or use --spec for pipelines).")
        ] = None,
        param: Annotated[
            list[str] | None, typer.Option("--param", "-p", help="Technique parameter key=value.")
        ] = None,
        spec: Annotated[
            Path | None, typer.Option(help="YAML/JSON target, targets list or CompressedModel.")
        ] = None,
        target_name: Annotated[str | None, typer.Option("--target", help="Which target of --spec.")] = None,
        calibration: Annotated[Path | None, typer.Option(help="Calibration data (.npz).")] = None,
        eval_data: Annotated[
            Path | None, typer.Option("--eval", help="Evaluation data (.npz, optional labels).")
        ] = None,
        train: Annotated[
            Path | None, typer.Option(help="Fine-tune/distillation data (default: calibration).")
        ] = None,
        task: Annotated[Task | None, typer.Option(help="Task (default classification).")] = None,
        max_accuracy_delta: Annotated[
            float | None, typer.Option(help="Accuracy budget (enables tuning).")
        ] = None,
        output: Annotated[Path, typer.Option("--output", "-o", help="Output directory.")] = Path(
            "kondense-out"
        ),
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
        threads: Annotated[int, typer.Option(min=1, max=64, help="ORT threads for latency.")] = 1,
        latency_runs: Annotated[int, typer.Option(min=10, help="Timed runs per model.")] = 200,
    ) -> None:
        """Compress MODEL with one technique or a pipeline, evaluate it against MODEL, write the variant."""
        from kondense.compression.pipeline import DataFiles, compress_model
        from kondense.compression.report import gate_label

        try:
            if (technique is None) == (spec is None):
                raise BadInputError("arguments", "give exactly one of --technique or --spec")
            defaults: dict[str, Any] = {}
            if spec is not None:
                if param:
                    raise BadInputError("--param", "parameters go into the spec file when --spec is used")
                target, defaults = read_spec_target(spec, target_name)
            else:
                assert technique is not None
                params = dict(parse_param(p) for p in param or [])
                target = {"name": technique.value, "technique": technique.value, "params": params}
            if eval_data is None:
                raise BadInputError("--eval", "evaluation data is required (held-out .npz, labels optional)")
            data = DataFiles(evaluation=eval_data, calibration=calibration, train=train)
            chosen_task = task or Task(defaults.get("task", Task.CLASSIFICATION))
            budget = (
                max_accuracy_delta if max_accuracy_delta is not None else defaults.get("maxAccuracyDelta")
            )
            with RichProgress(enabled=sys.stderr.isatty()) as progress:
                manifest = compress_model(
                    model,
                    target,
                    data,
                    output,
                    task=chosen_task,
                    max_accuracy_delta=budget,
                    threads=threads,
                    latency_runs=latency_runs,
                    progress=progress,
                )
        except BadInputError as exc:
            raise _fail(exc) from None
        except Exception as exc:
            print(f"error: compression failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            raise typer.Exit(EXIT_ERROR) from None

        m = manifest.metrics
        result = {
            "name": manifest.name,
            "output": str(output),
            "sizeRatio": m.sizeRatio,
            "p50Ms": m.p50Ms,
            "p99Ms": m.p99Ms,
            "baseP50Ms": m.baseP50Ms,
            "baseP99Ms": m.baseP99Ms,
            "accuracyDelta": m.accuracyDelta,
            "sha256": manifest.artifact.sha256,
            "trials": [t.model_dump(exclude_none=True) for t in manifest.trials],
            "gatePassed": manifest.gate.passed if manifest.gate else True,
            "gate": gate_label(manifest.gate),
        }
        if as_json:
            print(json.dumps(result, indent=2))
        else:
            assert m.sizeRatio and m.p50Ms and m.baseP50Ms is not None and m.accuracyDelta is not None
            row = {
                "name": manifest.name,
                "technique": "+".join(s.technique.value for s in manifest.steps),
                "size": f"{1 / m.sizeRatio:.2f}x smaller",
                "p50 ms (base)": f"{m.p50Ms:.3f} ({m.baseP50Ms:.3f})",
                "p99 ms": f"{m.p99Ms:.3f}",
                "accuracy delta": f"{m.accuracyDelta:.5f}",
                "trials": len(manifest.trials),
                "gate": gate_label(manifest.gate),
            }
            stdout_console().print(
                result_table([row], f"{output}/model.onnx  sha256 {manifest.artifact.sha256[:12]}…")
            )
        if not result["gatePassed"]:
            print(
                f"accuracy budget {manifest.gate.maxAccuracyDelta if manifest.gate else None} not met",
                file=sys.stderr,
            )
            raise typer.Exit(EXIT_BUDGET_NOT_MET)

    @app.command()
    def report(
        directories: Annotated[
            list[Path], typer.Argument(help="Variant output directories (with manifest.json).")
        ],
        plot: Annotated[Path | None, typer.Option(help="Write a Pareto plot (PNG) here.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print rows as JSON.")] = False,
    ) -> None:
        """Table of variants and an optional Pareto plot (size vs accuracy delta, latency as marker size)."""
        from kondense.compression.report import plot_pareto, read_manifest, row_of, verify_artifact

        try:
            rows = []
            for directory in directories:
                manifest = read_manifest(directory)
                if directory.is_dir():
                    verify_artifact(directory, manifest)
                rows.append(row_of(directory, manifest))
        except BadInputError as exc:
            raise _fail(exc) from None
        if as_json:
            print(json.dumps([vars(r) for r in rows], indent=2))
        else:
            stdout_console().print(
                result_table(
                    [
                        {
                            "name": r.name,
                            "technique": r.technique,
                            "smaller": f"{r.size_reduction:.2f}x",
                            "faster p50": f"{r.speedup:.2f}x",
                            "p50 ms": f"{r.p50_ms:.3f}",
                            "p99 ms": f"{r.p99_ms:.3f}",
                            "accuracy delta": f"{r.accuracy_delta:.5f}",
                            "gate": r.gate,
                        }
                        for r in rows
                    ],
                    "variants",
                )
            )
        if plot is not None:
            plot_pareto(rows, plot)
            print(f"wrote {plot}", file=sys.stderr)

    @app.command()
    def inspect(
        model: Annotated[Path, typer.Argument(help="ONNX model.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    ) -> None:
        """What MODEL is (inputs, outputs, opset, producer, parameters, weight storage, ops) and which
        techniques apply, with the reason for each that does not."""
        from kondense.compression.inspect_model import inspect as inspect_model

        try:
            found = inspect_model(model)
        except BadInputError as exc:
            raise _fail(exc) from None
        if as_json:
            print(json.dumps(found.as_dict(), indent=2))
            return
        console = stdout_console()
        opsets = ", ".join(f"{d} {v}" for d, v in found.opsets.items())
        console.print(
            f"[bold]{found.path}[/bold]  producer: {found.producer}  opset: {opsets}  IR {found.ir_version}"
        )
        for title, values in (("inputs", found.inputs), ("outputs", found.outputs)):
            for v in values:
                shape = "?" if v["shape"] is None else "[" + ", ".join(str(d) for d in v["shape"]) + "]"
                console.print(f"  {title[:-1]:6} {v['name']}: {v['type']} {shape}", markup=False)
        st = found.storage
        console.print(
            f"parameters: {found.parameters:,}  (initializers {st['initializers']['parameters']:,}, "
            f"Constant nodes {st['constantNodes']['parameters']:,} in {st['constantNodes']['nodes']}, "
            f"external data {st['externalData']['parameters']:,} in {st['externalData']['files'] or 'no file'}, "
            f"subgraphs {st['subgraphs']['parameters']:,} in {st['subgraphs']['graphs']})",
            markup=False,
        )
        top = list(found.ops.items())
        console.print(
            f"ops ({sum(found.ops.values())} nodes): "
            + ", ".join(f"{op} {n}" for op, n in top[:20])
            + (f", … {len(top) - 20} more types" if len(top) > 20 else ""),
            markup=False,
        )
        for note in found.notes:
            console.print(f"note: {note}", markup=False)
        from rich.table import Table

        table = Table(title="techniques")
        table.add_column("technique")
        table.add_column("applies")
        table.add_column("why", overflow="fold")
        for name, verdict in found.techniques.items():
            table.add_row(name, "yes" if verdict["applies"] else "no", verdict["reason"])
        console.print(table)

    @example_app.command("digits")
    def example_digits(
        out: Annotated[Path, typer.Option(help="Output directory.")] = Path("examples-out/digits"),
        epochs: Annotated[int, typer.Option(min=1, max=1000)] = 30,
    ) -> None:
        """Train a small CNN on sklearn's digits; write model.onnx, calib/train/eval .npz, replay requests."""
        from kondense.compression.examples import build_digits

        print(json.dumps(build_digits(out, epochs=epochs)))

    @example_app.command("minilm")
    def example_minilm(
        out: Annotated[Path, typer.Option(help="Output directory.")] = Path("examples-out/minilm"),
    ) -> None:
        """Export all-MiniLM-L6-v2 (pooling + L2 norm in the graph) and tokenized English data sets."""
        from kondense.compression.examples import build_minilm

        print(json.dumps(build_minilm(out)))

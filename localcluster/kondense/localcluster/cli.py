"""`kondense demo`: the whole loop on this machine, in the embedded local cluster."""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer


def demo(
    scenario: Annotated[
        str,
        typer.Option(
            "--scenario", "-s", help="happy, latency, accuracy, restart, prometheus-outage, job-failure."
        ),
    ] = "happy",
    workdir: Annotated[
        Path | None,
        typer.Option(help="Where logs, volumes and the object dump go (default .kondense/demo/<scenario>)."),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="The CompressedModel to apply (default: the digits example this package ships).",
        ),
    ] = None,
    examples_cache: Annotated[
        Path, typer.Option(help="Where the digits example is built once and reused.")
    ] = Path(".kondense/examples/digits"),
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Two fast targets, two replicas, two 5 s steps (what the tests run)."),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the final phase.")] = 900.0,
    plain: Annotated[bool, typer.Option("--plain", help="Log lines instead of the live table.")] = False,
    list_scenarios: Annotated[bool, typer.Option("--list", help="List the scenarios and exit.")] = False,
    command_dir: Annotated[
        list[Path] | None,
        typer.Option(help="Searched before the venv for container commands (e.g. a development build)."),
    ] = None,
) -> None:
    """Run kondense end to end on this machine: a local Kubernetes API, a process kubelet, Services on
    loopback, a real Prometheus, the real operator, compression Jobs and model servers.

    Exits 0 only when the scenario reached its expected outcome.
    """
    from rich.console import Console

    from kondense.localcluster.cluster import ClusterError
    from kondense.localcluster.demo import (
        LiveDisplay,
        LogDisplay,
        ensure_example,
        example_cr_file,
        print_summary,
    )
    from kondense.localcluster.prometheus import PrometheusError
    from kondense.localcluster.scenarios import SCENARIOS, run_scenario

    console = Console()
    if list_scenarios:
        for s in SCENARIOS.values():
            console.print(f"{s.name:18} -> {s.expected_phase:10} {s.summary}", markup=False)
        return
    if scenario not in SCENARIOS:
        console.print(f"error: unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}", style="red")
        raise typer.Exit(2)
    if file is not None and not file.is_file():
        console.print(f"error: --file {file}: no such file", style="red", markup=False)
        raise typer.Exit(2)
    workdir = workdir or Path(".kondense/demo") / scenario
    if workdir.exists():
        shutil.rmtree(workdir)

    def terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through run_scenario's cleanup like Ctrl-C

    signal.signal(signal.SIGTERM, terminate)
    live = not plain and console.is_terminal
    dirs = tuple(str(d.resolve()) for d in command_dir or [])
    with contextlib.ExitStack() as stack:
        try:
            cr_file = stack.enter_context(example_cr_file()) if file is None else file
            example = ensure_example(examples_cache, console)
            console.print(
                f"scenario {scenario}: {SCENARIOS[scenario].summary}; work directory {workdir.resolve()}"
            )
            display: Any = LiveDisplay(console, f"kondense demo: {scenario}") if live else LogDisplay(console)
            # the live table is a context manager (it owns the terminal); the log display needs none
            with display if live else contextlib.nullcontext():
                outcome = run_scenario(
                    SCENARIOS[scenario],
                    workdir,
                    example,
                    cr_file,
                    display,
                    quick=quick,
                    timeout_s=timeout,
                    bin_dirs=dirs,
                )
        except KeyboardInterrupt:
            console.print(f"interrupted: every process stopped; logs and objects.json in {workdir.resolve()}")
            raise typer.Exit(130) from None
        except (ClusterError, PrometheusError, OSError) as exc:
            console.print(f"error: {exc}", style="red", markup=False)
            console.print(f"logs in {(workdir / 'logs').resolve()}")
            raise typer.Exit(1) from None
    print_summary(console, outcome)
    sys.stdout.flush()
    raise typer.Exit(0 if outcome.ok else 1)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)

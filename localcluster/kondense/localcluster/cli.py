"""`kondense demo`: the whole loop on this machine, in the embedded local cluster."""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

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


def up(
    workdir: Annotated[
        Path,
        typer.Option(help="Work directory: objects, volumes, logs, Prometheus data (kept between runs)."),
    ] = Path(".kondense/up"),
    no_operator: Annotated[
        bool,
        typer.Option("--no-operator", help="Start no operator (e.g. to `helm install` the chart's instead)."),
    ] = False,
    port: Annotated[
        int | None,
        typer.Option(
            help="Port of the API server on 127.0.0.1 (default: the previous run's if free, else any)."
        ),
    ] = None,
    examples_cache: Annotated[
        Path,
        typer.Option(
            help="Where the digits example is built once and reused (copied to pvc://models/digits)."
        ),
    ] = Path(".kondense/examples/digits"),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the cluster to be ready.")] = 300.0,
) -> None:
    """Start the local cluster in the background (API server, process kubelet, Services, Prometheus, the
    operator) and print how to reach it; `kondense down` stops it, `kondense up` again resumes it.
    """
    from rich.console import Console

    from kondense.localcluster.cluster import ClusterError
    from kondense.localcluster.demo import ensure_example
    from kondense.localcluster.up import Files, UpError, running_daemon
    from kondense.localcluster.up import up as start

    console = Console(highlight=False)
    if port is not None and not 0 < port < 65536:
        _fail(f"--port {port}: not a TCP port (1-65535)")
    if workdir.exists() and not workdir.is_dir():
        _fail(f"--workdir {workdir}: not a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        examples = None
        if running_daemon(Files(workdir.resolve())) is None:
            examples = ensure_example(examples_cache, console)
        result = start(
            workdir, with_operator=not no_operator, api_port=port, examples=examples, timeout=timeout
        )
    except (UpError, ClusterError, OSError) as exc:
        _fail(str(exc))
    ready = result.ready
    where = workdir.resolve()
    if result.already:
        print(f"kondense up: already up in {where} (PID {ready['pid']})")
    else:
        operator = "with the operator" if ready.get("operator") else "without an operator (--no-operator)"
        print(f"kondense up: the local cluster is running {operator}; work directory {where}")
    print(f"export KUBECONFIG={ready['kubeconfig']}")
    print(f"dashboard: {ready.get('dashboard') or f'not available (see {where}/logs/dashboard.log)'}")
    print(f"prometheus: {ready['prometheus']}")
    print(f"services: `kondense urls --workdir {where}` prints the loopback URL of every Service")
    if not ready.get("operator"):
        print(
            "helm: helm install kondense charts/kondense -n kondense --create-namespace "
            f"-f deploy/local/values.yaml --set operator.pvcRoot={where / 'pvc'}"
        )
    print(f"stop: kondense down --workdir {where}")


def down(
    workdir: Annotated[Path, typer.Option(help="The work directory `kondense up` ran in.")] = Path(
        ".kondense/up"
    ),
) -> None:
    """Stop the local cluster `kondense up` started, and every process it started (objects are kept)."""
    from kondense.localcluster.up import down as stop

    if workdir.exists() and not workdir.is_dir():
        _fail(f"--workdir {workdir}: not a directory")
    result = stop(workdir)
    if not result.was_up:
        print(f"kondense down: the local cluster is not up in {workdir.resolve()}")
        return
    if result.left:
        _fail(f"processes still running after SIGKILL: {result.left}")
    print(
        f"kondense down: stopped ({result.stopped} processes); objects kept in {workdir.resolve() / 'state.json'}"
    )


def urls(
    workdir: Annotated[Path, typer.Option(help="The work directory `kondense up` ran in.")] = Path(
        ".kondense/up"
    ),
) -> None:
    """The loopback URL of every Service in the local cluster (what `kubectl port-forward` would give)."""
    from kondense.localcluster.up import UpError, service_urls

    try:
        services = service_urls(workdir)
    except UpError as exc:
        _fail(str(exc))
    if not services:
        print("no Services yet")
    for service in services:
        print(f"{service['namespace']}/{service['name']}:{service['port']}  {service['url']}")


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(2 if message.startswith("--") else 1)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
    app.command("up")(up)
    app.command("down")(down)
    app.command("urls")(urls)

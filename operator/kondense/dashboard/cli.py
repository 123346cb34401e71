"""`kondense dashboard`: the read-only web dashboard of the CompressedModels of a Kubernetes API."""

from __future__ import annotations

import signal
from typing import Annotated

import typer


def dashboard(
    kubeconfig: Annotated[
        str | None, typer.Option("--kubeconfig", help="kubeconfig of the cluster (default: $KUBECONFIG).")
    ] = None,
    context: Annotated[str | None, typer.Option("--context", help="kubeconfig context to use.")] = None,
    api: Annotated[
        str | None,
        typer.Option("--api", help="Kubernetes API URL without credentials (instead of a kubeconfig)."),
    ] = None,
    prometheus: Annotated[
        str | None,
        typer.Option("--prometheus", help="Prometheus URL for the SLI series (without it: only the checks)."),
    ] = None,
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Show this namespace only (default: all).")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port).")] = 8090,
    refresh: Annotated[
        int, typer.Option("--refresh", help="Pages reload themselves every this many seconds (0: never).")
    ] = 5,
) -> None:
    """Serve a read-only web dashboard: CompressedModels, variants (Pareto plot), the canary timeline
    with its SLIs from Prometheus and every decision, conditions, Events and compression progress."""
    from kondense.dashboard.data import kubeconfig_client_factory, url_client_factory
    from kondense.dashboard.server import serve

    if api and (kubeconfig or context):
        typer.echo("error: give either --api or --kubeconfig/--context, not both", err=True)
        raise typer.Exit(2)
    if api and not api.startswith(("http://", "https://")):
        typer.echo(f"error: --api {api!r} is not an http(s) URL", err=True)
        raise typer.Exit(2)
    if prometheus and not prometheus.startswith(("http://", "https://")):
        typer.echo(f"error: --prometheus {prometheus!r} is not an http(s) URL", err=True)
        raise typer.Exit(2)
    if not 0 <= port <= 65535:
        typer.echo(f"error: --port {port} is not a port (0-65535)", err=True)
        raise typer.Exit(2)
    factory = url_client_factory(api) if api else kubeconfig_client_factory(kubeconfig, context)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM (kondense down, a pod's stop) both end it cleanly, also when it was started
    # with SIGINT ignored (a background job of a non-interactive shell inherits SIG_IGN).
    for wanted in (signal.SIGINT, signal.SIGTERM):
        signal.signal(wanted, stop)
    try:
        serve(
            factory,
            prometheus,
            host,
            port,
            namespace=namespace,
            refresh_seconds=refresh or None,
            ready=lambda url: typer.echo(f"dashboard: {url}", err=False),
        )
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer) -> None:
    app.command("dashboard")(dashboard)

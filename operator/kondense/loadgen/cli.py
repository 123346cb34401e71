"""`kondense loadgen`: the load-generator Job of `analysis.loadTest` (and the demo's traffic)."""

from __future__ import annotations

import typer


def loadgen(
    url: str = typer.Option(..., "--url", help="Base URL of the model Service, e.g. http://digits:8080."),
    model: str = typer.Option(..., "--model", help="Model name in /v2/models/{name}/infer."),
    data: str = typer.Option(..., "--data", help="Evaluation data (.npz): file path, file:// or pvc:// URI."),
    rps: float = typer.Option(20.0, "--rps", min=0.1, help="Requests per second (open loop)."),
    duration: float | None = typer.Option(
        None, "--duration", min=0.1, help="Seconds; default: until stopped."
    ),
    pvc_root: str = typer.Option("/mnt/pvc", "--pvc-root", envvar="KONDENSE_PVC_ROOT"),
) -> None:
    """Replay the evaluation inputs one row per request at a fixed rate."""
    import asyncio
    import json
    import signal

    import numpy as np

    from kondense.api.uris import UriError, local_path
    from kondense.loadgen.requests import DataError, request_bodies
    from kondense.loadgen.runner import run_load

    try:
        path = local_path(data, pvc_root)
    except UriError as exc:
        typer.echo(f"error: --data: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        with np.load(path, allow_pickle=False) as npz:
            bodies = request_bodies({k: npz[k] for k in npz.files})
    except (OSError, ValueError, DataError) as exc:
        typer.echo(f"error: {data}: {exc}", err=True)
        raise typer.Exit(2) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        stats = await run_load(url, model, bodies, rps, duration, stop=stop)
        typer.echo(json.dumps(stats.summary()))

    asyncio.run(main())


def register(app: typer.Typer) -> None:
    app.command("loadgen")(loadgen)

"""`kondense operator`: run the controller."""

from __future__ import annotations

import typer


def operator(
    namespace: list[str] = typer.Option(  # noqa: B008
        None,
        "--namespace",
        "-n",
        help="Namespace to watch (repeatable); default: KONDENSE_NAMESPACES or all.",
    ),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="Watch every namespace."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the kondense operator (kopf, standalone: one replica, no peering)."""
    import asyncio
    import logging

    import kopf

    from kondense.operator import handlers

    namespaces = [] if all_namespaces else (namespace or handlers.SETTINGS.namespaces)
    health = f"http://0.0.0.0:{handlers.SETTINGS.health_port}/healthz"
    logging.basicConfig(
        level=logging.DEBUG if verbose else handlers.SETTINGS.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:  # one line per timer tick and object is noise at INFO
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=list(namespaces or []),
            liveness_endpoint=health,
        )
    )


def register(app: typer.Typer) -> None:
    app.command("operator")(operator)

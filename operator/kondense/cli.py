"""The `kondense` console script.

Every area registers its own subcommands through the entry-point group ``kondense.commands``: each entry
names a ``register(app)`` function (``kondense.<area>.cli:register``). The ``kondense`` distribution
declares its areas (api, compression, serving, operator, triton, loadgen, dashboard); other distributions add
theirs (``kondense-localcluster`` adds ``demo``), so an area that is not installed simply has no entry.
Importing a ``cli`` module stays cheap: torch, onnxruntime and kopf are only imported by the command
that needs them (``tests/test_packaging.py`` checks that every entry loads with the base dependencies).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

import typer

ENTRY_POINT_GROUP = "kondense.commands"


def command_entry_points() -> list[EntryPoint]:
    """The installed areas, by name (a name installed twice, e.g. an editable and a wheel, counts once)."""
    unique: dict[str, EntryPoint] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        unique.setdefault(entry.name, entry)
    return [unique[name] for name in sorted(unique)]


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="kondense",
        help="Compress models, evaluate the variants and roll the best one out as a canary.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    for entry in command_entry_points():
        register: Callable[[typer.Typer], None] = entry.load()
        register(app)
    return app


def main() -> None:
    build_app()()


if __name__ == "__main__":
    main()

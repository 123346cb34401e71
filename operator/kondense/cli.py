"""The `kondense` console script.

Each area registers its own subcommands (``register(app)`` in ``kondense.<area>.cli``), so importing
this module stays cheap: torch, onnxruntime and kopf are only imported by the command that needs them.
"""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES = (
    "kondense.api.cli",  # crd, validate
    "kondense.compression.cli",  # compress, report, example
    "kondense.serving.cli",  # serve
    "kondense.operator.cli",  # operator
    "kondense.triton.cli",  # triton-repository (init container of triton pods)
    "kondense.loadgen.cli",  # loadgen (analysis.loadTest Jobs, the demo)
    "kondense.localcluster.cli",  # demo
)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="kondense",
        help="Compress models, evaluate the variants and roll the best one out as a canary.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # An area whose third-party packages are not installed (an image with one extra only,
            # e.g. the serving image has no kmock for `demo`) is not part of this build; a missing
            # kondense module elsewhere is a bug and raises.
            missing = exc.name or ""
            if name.startswith(missing) or not missing.startswith("kondense"):
                continue
            raise
        module.register(app)
    return app


def main() -> None:
    build_app()()


if __name__ == "__main__":
    main()

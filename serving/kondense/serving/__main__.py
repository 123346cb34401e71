"""``python -m kondense.serving ...`` is ``kondense serve ...`` without the other areas' commands.

The serving image uses it: its entry point must not depend on what other areas import at start-up.
"""

from __future__ import annotations

import typer

from kondense.serving.cli import serve


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(serve)
    app()


if __name__ == "__main__":
    main()

"""`kondense crd` and `kondense validate`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def crd(
    reference: bool = typer.Option(False, "--reference", help="Print the Markdown field reference instead."),
) -> None:
    """Print the CompressedModel CRD generated from the models."""
    if reference:
        from kondense.api.reference import markdown

        sys.stdout.write(markdown())
        return
    from kondense.api.crd import crd_yaml

    sys.stdout.write(crd_yaml())


def validate(
    files: list[Path] = typer.Argument(..., help="CompressedModel YAML files ('-' reads standard input)."),  # noqa: B008
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print errors only."),
) -> None:
    """Check CompressedModel files; print every error with its field path (exit 1 on any)."""
    from kondense.api.validation import DocumentError, format_errors, load_documents, validate_object

    failed = 0
    for file in files:
        try:
            if str(file) == "-":
                documents = load_documents("<stdin>", sys.stdin.read())
            else:
                documents = load_documents(file)
        except DocumentError as exc:
            typer.echo(str(exc), err=True)
            failed += 1
            continue
        for document in documents:
            model, errors = validate_object(document.body)
            if errors:
                failed += 1
                for line in format_errors(document.source, errors):
                    typer.echo(line, err=True)
            elif not quiet and model is not None:
                typer.echo(f"{document.source}: valid ({model.metadata.name or 'unnamed'})")
    raise typer.Exit(1 if failed else 0)


def register(app: typer.Typer) -> None:
    app.command("crd")(crd)
    app.command("validate")(validate)

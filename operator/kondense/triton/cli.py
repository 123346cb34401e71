"""`kondense triton-repository`: the Triton pods' init container."""

from __future__ import annotations

from pathlib import Path

import typer


def triton_repository(
    model: Path = typer.Option(..., "--model", help="Artifact directory (model.onnx + manifest.json)."),  # noqa: B008
    repository: Path = typer.Option(..., "--repository", help="Triton model repository to fill."),  # noqa: B008
    name: str = typer.Option(..., "--name", help="Model name in Triton."),
    expected_sha256: str = typer.Option(
        ...,
        "--expected-sha256",
        help="The artifact digest the operator recorded: model.onnx and its external data must match it "
        "and the manifest's artifact.sha256.",
    ),
    max_batch_size: int = typer.Option(8, min=0),
    preferred_batch_size: list[int] = typer.Option([], "--preferred-batch-size"),  # noqa: B008
    max_queue_delay_us: int | None = typer.Option(None, "--max-queue-delay-us", min=0),
    instance_kind: str = typer.Option("KIND_CPU", "--instance-kind"),
    instance_count: int = typer.Option(1, "--instance-count", min=1),
) -> None:
    """Verify the artifact's digest and write <repository>/<name>/{config.pbtxt,1/model.onnx}."""
    from kondense.triton.config import BatchingSpec, TritonConfigError
    from kondense.triton.repository import RepositoryError, build_repository

    batching = BatchingSpec(
        max_batch_size, preferred_batch_size, max_queue_delay_us, instance_kind, instance_count
    )
    try:
        target = build_repository(model, repository, name, batching, expected_sha256)
    except (RepositoryError, TritonConfigError) as exc:
        typer.echo(f"kondense triton-repository: error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"model repository ready: {target}")


def register(app: typer.Typer) -> None:
    app.command("triton-repository")(triton_repository)

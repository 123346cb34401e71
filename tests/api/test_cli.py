"""The `kondense` command: every area registers through the `kondense.commands` entry points."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer.core
import typer.main

from kondense import cli


def _install_area(site: Path, dist: str, module: str, source: str) -> None:
    """A minimal installed distribution (dist-info with one ``kondense.commands`` entry) on ``site``."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[kondense.commands]\n{dist} = {module}:register\n")


def _kondense(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; sys.path.insert(0, sys.argv.pop(1)); from kondense.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, str(site), *args], capture_output=True, text=True, timeout=120
    )


def test_an_installed_area_adds_its_commands_and_a_broken_one_is_not_hidden(tmp_path: Path) -> None:
    _install_area(
        tmp_path,
        "hello-area",
        "hello_area",
        """
        import typer

        def hello() -> None:
            print("hello from an entry point")

        def register(app: typer.Typer) -> None:
            app.command("hello")(hello)
    """,
    )
    result = _kondense(tmp_path, "hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello from an entry point"
    # an area whose module cannot import is an installation bug: it raises, nothing is skipped
    _install_area(tmp_path, "broken-area", "broken_area", "import kondense_no_such_package\n")
    result = _kondense(tmp_path, "hello")
    assert result.returncode != 0
    assert "No module named 'kondense_no_such_package'" in result.stderr


def test_every_area_registers_in_the_full_install() -> None:
    group = typer.main.get_command(cli.build_app())
    assert isinstance(group, typer.core.TyperGroup)
    names = set(group.commands)
    assert {"crd", "validate", "compress", "report", "example", "serve", "operator", "demo",
            "triton-repository", "loadgen"} <= names  # fmt: skip
    entries = {e.name: e.value for e in cli.command_entry_points()}
    assert entries["demo"] == "kondense.localcluster.cli:register"  # from kondense-localcluster
    assert sys.modules.get("kondense.cli") is cli


def test_artifact_digest_covers_external_data_and_stays_inside(tmp_path):
    from kondense.api.artifacts import ArtifactPathError, artifact_digest, sha256_file

    model = tmp_path / "model.onnx"
    model.write_bytes(b"graph")
    assert artifact_digest(model) == sha256_file(model)
    (tmp_path / "weights.bin").write_bytes(b"w1")
    first = artifact_digest(model, ["weights.bin"])
    assert first != sha256_file(model)
    (tmp_path / "weights.bin").write_bytes(b"w2")
    assert artifact_digest(model, ["weights.bin"]) != first
    for outside in ("../etc/hostname", "/etc/hostname", ""):
        with pytest.raises(ArtifactPathError):
            artifact_digest(model, [outside])

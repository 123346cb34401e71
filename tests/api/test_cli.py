"""The `kondense` command: areas whose packages are not installed are left out, bugs are not hidden."""

from __future__ import annotations

import sys
import types

import pytest
import typer.core
import typer.main

from kondense import cli


def test_area_with_a_missing_third_party_package_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = types.ModuleType("kondense_fake_area")

    def importer(name: str) -> types.ModuleType:
        if name == "kondense.fake.cli":
            raise ModuleNotFoundError("No module named 'kmock'", name="kmock")
        if name == "kondense.buggy.cli":
            raise ModuleNotFoundError("No module named 'kondense.typo'", name="kondense.typo")
        return broken

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("kondense.fake.cli",))
    monkeypatch.setattr(cli.importlib, "import_module", importer)
    app = cli.build_app()
    assert app.registered_commands == []
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("kondense.buggy.cli",))
    with pytest.raises(ModuleNotFoundError, match=r"kondense\.typo"):
        cli.build_app()


def test_every_area_registers_in_the_full_install() -> None:
    group = typer.main.get_command(cli.build_app())
    assert isinstance(group, typer.core.TyperGroup)
    names = set(group.commands)
    assert {"crd", "validate", "compress", "report", "example", "serve", "operator", "demo",
            "triton-repository", "loadgen"} <= names  # fmt: skip
    assert "kondense.localcluster.cli" in cli.COMMAND_MODULES and sys.modules.get("kondense.cli") is cli


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

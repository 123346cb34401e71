"""`kondense.api.uris`: one rule for pvc:// and file://, used by the operator, the Job and loadgen."""

from __future__ import annotations

from pathlib import Path

import pytest

from kondense.api.uris import PvcUri, UriError, check_uri, file_uri_path, local_path, parse_pvc_uri


@pytest.mark.parametrize(
    ("uri", "claim", "path"),
    [
        ("pvc://models/digits/model.onnx", "models", "digits/model.onnx"),
        ("pvc://models//digits/./model.onnx", "models", "digits/model.onnx"),
        ("pvc://my.claim-1/a%20b.npz", "my.claim-1", "a b.npz"),
        ("pvc://models/", "models", ""),
    ],
)
def test_pvc_uris_parse_to_claim_and_relative_path(uri: str, claim: str, path: str) -> None:
    assert parse_pvc_uri(uri, require_path=False) == PvcUri(claim, path)


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("pvc:///model.onnx", "claim name is missing"),
        ("pvc://Models/model.onnx", "not a PersistentVolumeClaim name"),
        ("pvc://models_1/model.onnx", "not a PersistentVolumeClaim name"),
        ("pvc://user@models/model.onnx", "not a PersistentVolumeClaim name"),
        ("pvc://models:80/model.onnx", "not a PersistentVolumeClaim name"),
        ("pvc://" + "a" * 254 + "/m.onnx", "not a PersistentVolumeClaim name"),
        ("pvc://models/../other/model.onnx", "'..'"),
        ("pvc://models/a/%2e%2e/%2e%2e/etc/passwd", "'..'"),
        ("pvc://models/model.onnx?x=1", "no query or fragment"),
        ("pvc://models/model.onnx#frag", "no query or fragment"),
        ("pvc://models/a%00b", "NUL"),
        ("pvc://models", "path inside the claim is missing"),
        ("http://models/model.onnx", "not a pvc:// URI"),
    ],
)
def test_pvc_uris_off_the_rule_are_refused_with_the_reason(uri: str, problem: str) -> None:
    with pytest.raises(UriError) as info:
        parse_pvc_uri(uri)
    assert problem in str(info.value)
    assert uri[:40] in str(info.value) or "NUL" in problem


def test_the_claim_root_is_accepted_where_a_directory_may_be_given() -> None:
    assert parse_pvc_uri("pvc://artifacts", require_path=False) == PvcUri("artifacts", "")
    assert local_path("pvc://artifacts", "/mnt/pvc", require_path=False) == "/mnt/pvc/artifacts"


def test_local_paths_for_every_scheme() -> None:
    assert local_path("pvc://models/d/m.onnx", "/mnt/pvc") == "/mnt/pvc/models/d/m.onnx"
    assert local_path("file:///data/eval%20set.npz", "/mnt/pvc") == "/data/eval set.npz"
    assert local_path("file://localhost/data/e.npz", "/mnt/pvc") == "/data/e.npz"
    assert local_path("relative/e.npz", "/mnt/pvc") == "relative/e.npz"
    with pytest.raises(UriError, match="with a host"):
        file_uri_path("file://server/data/e.npz")
    with pytest.raises(UriError, match="unsupported scheme 'https'"):
        local_path("https://example.com/m.onnx", "/mnt/pvc")


def test_check_uri_applies_the_pvc_rule_and_leaves_other_schemes() -> None:
    assert check_uri("https://example.com/m.onnx") == "https://example.com/m.onnx"
    assert check_uri("pvc://models") == "pvc://models"
    with pytest.raises(UriError):
        check_uri("pvc://Bad_Claim/m.onnx")


def test_the_three_parsers_agree(tmp_path: Path) -> None:
    """The operator's mount path, the Job's file and the load generator's file are the same file."""
    from kondense.compression.uris import UriResolver
    from kondense.operator.locations import Location

    uri = "pvc://models/digits/eval%20set.npz"
    operator_side = Location(uri).local_path(str(tmp_path))
    job_side = UriResolver(pvc_root=tmp_path).local_path(uri, "--eval")
    assert operator_side == str(job_side) == str(tmp_path / "models" / "digits" / "eval set.npz")
    assert Location(uri).claim == "models"


def test_loadgen_resolves_data_by_the_same_rule(tmp_path: Path) -> None:
    """`kondense loadgen --data` reads the file the rule names, and refuses what it refuses."""
    import numpy as np
    import typer
    from typer.testing import CliRunner

    from kondense.loadgen.cli import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps `loadgen` a named subcommand
    (tmp_path / "models" / "digits").mkdir(parents=True)
    np.savez(tmp_path / "models" / "digits" / "eval set.npz", x=np.zeros((2, 3), np.float32))
    common = ["loadgen", "--url", "http://127.0.0.1:9", "--model", "m", "--pvc-root", str(tmp_path)]
    runner = CliRunner()
    bad = runner.invoke(app, [*common, "--data", "pvc://Bad_Claim/eval.npz"])
    assert bad.exit_code == 2 and "--data: pvc://Bad_Claim/eval.npz: claim 'Bad_Claim'" in bad.output
    escape = runner.invoke(app, [*common, "--data", "pvc://models/%2e%2e/%2e%2e/etc/passwd"])
    assert escape.exit_code == 2 and "may not contain '..'" in escape.output
    missing = runner.invoke(app, [*common, "--data", "pvc://models/digits/absent%20set.npz"])
    assert missing.exit_code == 2 and str(tmp_path / "models" / "digits" / "absent set.npz") in missing.output


@pytest.mark.parametrize(
    ("field", "uri"),
    [
        ("baseModel", "pvc://Models/digits/model.onnx"),
        ("baseModel", "pvc://models/../other/model.onnx"),
        ("artifacts", "pvc://models_x/out"),
    ],
)
def test_the_resource_refuses_pvc_uris_off_the_rule(field: str, uri: str) -> None:
    """The operator parses every object with the models: an off-rule URI is Invalid, not a crash later."""
    import pydantic

    from kondense.api.resource import CompressedModelSpec
    from kondense_testing.builders import DIGITS

    spec = dict(DIGITS["spec"])
    spec[field] = {**(spec.get(field) or {}), "uri": uri}
    with pytest.raises(pydantic.ValidationError) as info:
        CompressedModelSpec.model_validate(spec)
    assert uri in str(info.value)

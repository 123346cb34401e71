"""The Triton init container refuses artifacts it cannot trust and writes names into config.pbtxt as
data: hostile names round-trip through Triton's own ModelConfig schema (issue 11, points 3 and 11)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from google.protobuf import text_format
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import model_config_pb2

from kondense.api.artifacts import MANIFEST_FILE, Manifest
from kondense.triton.config import BatchingSpec, TensorSpec, TritonConfigError, model_config, quote
from kondense_testing.onnx_models import artifact_dir, external_data_artifact_dir, manifest_digest
from kondense_testing.tools import kondense

INJECTED = 'x"\nparameters { key: "EXECUTION_ENV_PATH" value: { string_value: "/tmp/evil" } }\nname: "y'


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return kondense("triton-repository", *args)


def build(model_dir: Path, repo: Path, *extra: str, name: str = "m") -> subprocess.CompletedProcess[str]:
    return run("--model", str(model_dir), "--repository", str(repo), "--name", name, *extra)


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def one_sentence_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- config.pbtxt escaping -------------------------------------------------------------------------


def test_an_injected_parameters_block_stays_a_name() -> None:
    text = model_config(
        INJECTED,
        [TensorSpec(INJECTED, "tensor(float)", ["batch", 4])],
        [TensorSpec('out\\"}', "tensor(float)", ["batch", 2])],
        BatchingSpec(max_batch_size=4),
    )
    config = parse(text)
    assert config.name == INJECTED
    assert [i.name for i in config.input] == [INJECTED]
    assert [o.name for o in config.output] == ['out\\"}']
    assert not config.parameters  # the crafted block did not become config
    assert len(config.input) == 1 and list(config.input[0].dims) == [4]


names = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(model=names, tensor=names)
def test_any_name_round_trips_as_data(model: str, tensor: str) -> None:
    text = model_config(
        model,
        [TensorSpec(tensor, "tensor(int64)", ["batch", 3])],
        [TensorSpec(tensor + "_out", "tensor(float)", ["batch"])],
        BatchingSpec(),
    )
    assert text.isascii()
    config = parse(text)
    assert config.name == model
    assert config.input[0].name == tensor and config.output[0].name == tensor + "_out"
    assert not config.parameters


def test_quote_matches_protobufs_own_escaping() -> None:
    for text in ["plain", 'q"uote', "back\\slash", "new\nline", "tab\t", "nul\0", "ünï", "emoji 🙂", "'"]:
        message = model_config_pb2.ModelConfig(name=text)
        assert parse(f"name: {quote(text)}") == message


def test_an_unknown_instance_kind_is_refused() -> None:
    with pytest.raises(TritonConfigError, match="instance kind"):
        model_config(
            "m",
            [TensorSpec("x", "tensor(float)", ["batch", 2])],
            [TensorSpec("y", "tensor(float)", ["batch", 2])],
            BatchingSpec(instance_kind='KIND_CPU }\nparameters { key: "a" }'),
        )


# --- the artifact --------------------------------------------------------------------------------


def _rewrite_manifest(model_dir: Path, **artifact: object) -> None:
    path = model_dir / MANIFEST_FILE
    manifest = Manifest.model_validate_json(path.read_bytes())
    manifest.artifact = manifest.artifact.model_copy(update=artifact)
    path.write_text(manifest.model_dump_json())


@pytest.mark.parametrize("file", ["/etc/hostname", "../outside.onnx", "link.onnx"])
def test_an_artifact_file_outside_its_directory_is_refused(tmp_path: Path, file: str) -> None:
    model_dir = artifact_dir(tmp_path / "artifact")
    (tmp_path / "outside.onnx").write_bytes((model_dir / "model.onnx").read_bytes())
    (model_dir / "link.onnx").symlink_to(tmp_path / "outside.onnx")
    digest = manifest_digest(model_dir)
    _rewrite_manifest(model_dir, file=file)
    result = build(model_dir, tmp_path / "models", "--expected-sha256", digest)
    line = one_sentence_error(result)
    assert "refusing the artifact" in line and repr(file) in line
    assert not (tmp_path / "models" / "m").exists()


def test_external_data_outside_the_directory_is_refused(tmp_path: Path) -> None:
    model_dir = external_data_artifact_dir(tmp_path / "artifact")
    digest = manifest_digest(model_dir)
    _rewrite_manifest(model_dir, externalData=["../../etc/hostname"])
    line = one_sentence_error(build(model_dir, tmp_path / "models", "--expected-sha256", digest))
    assert "outside the artifact directory" in line


def test_external_data_is_verified_and_copied(tmp_path: Path) -> None:
    model_dir = external_data_artifact_dir(tmp_path / "artifact")
    digest = manifest_digest(model_dir)
    result = build(model_dir, tmp_path / "models", "--expected-sha256", digest)
    assert result.returncode == 0, result.stderr
    version = tmp_path / "models" / "m" / "1"
    assert (version / "weights.bin").read_bytes() == (model_dir / "weights.bin").read_bytes()
    assert parse((tmp_path / "models" / "m" / "config.pbtxt").read_text()).input[0].name == "x"


def test_tampered_external_data_is_refused(tmp_path: Path) -> None:
    model_dir = external_data_artifact_dir(tmp_path / "artifact")
    digest = manifest_digest(model_dir)
    weights = model_dir / "weights.bin"
    raw = bytearray(weights.read_bytes())
    raw[0] ^= 0xFF
    weights.write_bytes(bytes(raw))
    line = one_sentence_error(build(model_dir, tmp_path / "models", "--expected-sha256", digest))
    assert "does not match the manifest" in line


def test_an_artifact_and_manifest_replaced_together_are_refused(tmp_path: Path) -> None:
    """The manifest agrees with the replaced model; only the operator's recorded digest catches it."""
    recorded = manifest_digest(artifact_dir(tmp_path / "original"))
    replaced = artifact_dir(tmp_path / "replaced", seed=7)
    assert manifest_digest(replaced) != recorded
    line = one_sentence_error(build(replaced, tmp_path / "models", "--expected-sha256", recorded))
    assert f"is not the expected {recorded}" in line
    assert not (tmp_path / "models" / "m").exists()


def test_the_expected_digest_is_required(tmp_path: Path) -> None:
    model_dir = artifact_dir(tmp_path / "artifact")
    result = build(model_dir, tmp_path / "models")
    assert result.returncode != 0 and "--expected-sha256" in result.stderr
    line = one_sentence_error(build(model_dir, tmp_path / "models", "--expected-sha256", "abc"))
    assert "not 64 lowercase hex digits" in line


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ""])
def test_a_model_name_that_is_not_one_directory_is_refused(tmp_path: Path, name: str) -> None:
    model_dir = artifact_dir(tmp_path / "artifact")
    repo = tmp_path / "repo" / "models"
    result = build(model_dir, repo, "--expected-sha256", manifest_digest(model_dir), name=name)
    assert "one path component" in one_sentence_error(result)
    assert not (tmp_path / "repo" / "escape").exists()


def test_an_invalid_manifest_is_one_clear_sentence(tmp_path: Path) -> None:
    model_dir = artifact_dir(tmp_path / "artifact")
    digest = manifest_digest(model_dir)
    (model_dir / MANIFEST_FILE).write_text('{"name": 3}')
    line = one_sentence_error(build(model_dir, tmp_path / "models", "--expected-sha256", digest))
    assert "is not a valid manifest" in line

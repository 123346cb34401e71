"""Triton model repositories: config.pbtxt from the real ONNX graph, parsed with Triton's own schema."""

from __future__ import annotations

import subprocess
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from kondense.triton.config import BatchingSpec, TensorSpec, model_config
from kondense_testing.onnx_models import artifact_dir, manifest_digest
from kondense_testing.tools import kondense


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return kondense("triton-repository", *args)


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_repository_from_a_verified_artifact(tmp_path: Path) -> None:
    model_dir = artifact_dir(tmp_path / "artifact")
    repo = tmp_path / "models"
    result = run(
        "--model", str(model_dir), "--repository", str(repo), "--name", "digits",
        "--expected-sha256", manifest_digest(model_dir), "--max-batch-size", "16", "--preferred-batch-size", "4", "--preferred-batch-size", "8",
        "--max-queue-delay-us", "500",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (repo / "digits" / "1" / "model.onnx").read_bytes() == (model_dir / "model.onnx").read_bytes()
    config = parse((repo / "digits" / "config.pbtxt").read_text())
    assert config.name == "digits" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    assert [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims)) for i in config.input] == [
        ("x", "TYPE_FP32", [64])
    ]
    assert [(o.name, list(o.dims)) for o in config.output] == [("probabilities", [10])]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_fixed_batch_dimension_disables_batching(tmp_path: Path) -> None:
    model_dir = artifact_dir(tmp_path / "artifact", batch=1)
    repo = tmp_path / "models"
    digest = manifest_digest(model_dir)
    result = run(
        "--model", str(model_dir), "--repository", str(repo), "--name", "m", "--expected-sha256", digest
    )
    assert result.returncode == 0, result.stderr
    config = parse((repo / "m" / "config.pbtxt").read_text())
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [1, 64]


def test_tampered_artifact_is_refused(tmp_path: Path) -> None:
    model_dir = artifact_dir(tmp_path / "artifact")
    digest = manifest_digest(model_dir)
    with open(model_dir / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    result = run(
        "--model", str(model_dir), "--repository", str(tmp_path / "models"), "--name", "m",
        "--expected-sha256", digest,
    )  # fmt: skip
    assert result.returncode == 2
    assert "does not match the manifest" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "models" / "m").exists()


def test_every_generated_type_and_gpu_groups_parse() -> None:
    inputs = [TensorSpec(f"in_{i}", t, ["batch", 3]) for i, t in enumerate(["tensor(float)", "tensor(int64)",
              "tensor(float16)", "tensor(uint8)", "tensor(bool)", "tensor(string)"])]  # fmt: skip
    text = model_config("m", inputs, [TensorSpec("out", "tensor(float)", ["batch"])], BatchingSpec(
        max_batch_size=4, instance_kind="KIND_GPU", instance_count=2))  # fmt: skip
    config = parse(text)
    assert len(config.input) == 6 and list(config.output[0].dims) == [1]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert config.instance_group[0].count == 2

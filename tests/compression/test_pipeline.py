"""Targets, pipelines, provenance and atomic output."""

from __future__ import annotations

import json

import pytest

from kondense.api.artifacts import MANIFEST_FILE, MODEL_FILE, Manifest, sha256_file
from kondense.api.techniques import Technique
from kondense.compression.errors import BadInputError
from kondense.compression.pipeline import DataFiles, compress_model, parse_target


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"technique": "fp16"}, r"target.name: must be a non-empty string"),
        ({"name": "x", "technique": "svd"}, r"target.technique: unknown technique 'svd'"),
        (
            {"name": "x", "technique": "prune", "params": {"amount": 1.5}},
            r"target.params: amount: .*less than 1",
        ),
        (
            {"name": "x", "technique": "prune", "params": {"amout": 0.5}},
            r"target.params: amout: Extra inputs",
        ),
        ({"name": "x", "technique": "fp16", "steps": []}, r"exactly one of"),
        (
            {"name": "x", "steps": [{"technique": "fp16"}, {"technique": "nope"}]},
            r"target.steps\[1\].technique",
        ),
        (
            {"name": "x", "technique": "fp16", "maxAccuracyDelta": -1},
            r"maxAccuracyDelta: must be a number >= 0",
        ),
        ({"name": "x", "technique": "fp16", "color": "red"}, r"unknown field\(s\) \['color'\]"),
    ],
)
def test_bad_targets_name_the_field(raw, message):
    with pytest.raises(BadInputError, match=message):
        parse_target(raw)


def test_target_defaults_are_filled_in():
    spec = parse_target(
        {
            "name": "p",
            "steps": [{"technique": "prune", "params": {"structured": True}}, {"technique": "static-int8"}],
        }
    )
    assert [s.technique for s in spec.steps] == [Technique.PRUNE, Technique.STATIC_INT8]
    assert spec.steps[0].params["amount"] == 0.5 and spec.steps[0].params["structured"] is True
    assert spec.steps[1].params["calibrationMethod"] == "minmax"
    assert spec.technique_label == "prune+static-int8"


def test_pipeline_manifest_has_full_provenance(digits, tmp_path):
    target = {
        "name": "small",
        "steps": [
            {"technique": "prune", "params": {"amount": 0.5, "structured": True, "fineTuneEpochs": 3}},
            {"technique": "static-int8", "params": {"calibrationMethod": "percentile"}},
        ],
        "maxAccuracyDelta": 0.05,
    }
    data = DataFiles(evaluation=digits.eval, calibration=digits.calib, train=digits.train)
    manifest = compress_model(digits.model, target, data, tmp_path / "out", latency_runs=20)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_FILE, MODEL_FILE]
    on_disk = Manifest.model_validate_json((out / MANIFEST_FILE).read_text())
    assert on_disk.artifact.sha256 == sha256_file(out / MODEL_FILE) == manifest.artifact.sha256
    assert on_disk.artifact.sizeBytes == (out / MODEL_FILE).stat().st_size
    assert on_disk.base.sha256 == sha256_file(digits.model)
    assert [s.technique for s in on_disk.steps] == [Technique.PRUNE, Technique.STATIC_INT8]
    assert on_disk.steps[1].params["calibrationMethod"] == "percentile"
    assert {"onnx", "onnxruntime", "torch", "torch-pruning"} <= set(on_disk.tools)
    assert on_disk.gate is not None and on_disk.gate.maxAccuracyDelta == 0.05 and on_disk.gate.passed
    assert (
        on_disk.metrics.sizeRatio is not None and on_disk.metrics.sizeRatio < 0.1
    )  # channels removed, then int8
    raw = json.loads((out / MANIFEST_FILE).read_text())
    assert raw["data"]["evaluation"]["sha256"] == sha256_file(digits.eval)
    assert raw["data"]["train"]["sha256"] == sha256_file(digits.train)
    assert all(t["step"] == 1 for t in raw["trials"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_failure_leaves_nothing_half_written(digits, tmp_path):
    target = {
        "name": "bad",
        "steps": [{"technique": "fp16"}, {"technique": "distill", "params": {"keepLayers": [1]}}],
    }
    with pytest.raises(BadInputError):
        compress_model(
            digits.model, target, DataFiles(evaluation=digits.eval, train=digits.train), tmp_path / "out"
        )
    assert list(tmp_path.iterdir()) == []


def test_rerun_replaces_a_previous_variant_but_never_mixes_with_foreign_files(digits, tmp_path):
    out = tmp_path / "out"
    data = DataFiles(evaluation=digits.eval)
    first = compress_model(digits.model, {"name": "a", "technique": "fp16"}, data, out, latency_runs=10)
    second = compress_model(
        digits.model, {"name": "b", "technique": "dynamic-int8"}, data, out, latency_runs=10
    )
    assert first.artifact.sha256 != second.artifact.sha256
    assert Manifest.model_validate_json((out / MANIFEST_FILE).read_text()).name == "b"
    assert sha256_file(out / MODEL_FILE) == second.artifact.sha256
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BadInputError, match=r"holds other files \['notes.txt'\]"):
        compress_model(digits.model, {"name": "c", "technique": "fp16"}, data, out, latency_runs=10)
    assert sha256_file(out / MODEL_FILE) == second.artifact.sha256


def test_missing_training_data_is_bad_input(digits, tmp_path):
    with pytest.raises(BadInputError, match="needs training"):
        compress_model(
            digits.model,
            {"name": "d", "technique": "distill"},
            DataFiles(evaluation=digits.eval),
            tmp_path / "d",
        )

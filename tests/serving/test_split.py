"""Batches cut into one slice per core on a second, one-thread session (``RowSplitModel``), on real
ONNX Runtime sessions: the answers equal one call on the whole batch; what cannot be split runs as
one call; ``kondense serve`` loads the second session only when it may."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from kondense.api.artifacts import MODEL_FILE
from kondense.serving import batching
from kondense.serving.app import ServerSettings
from kondense.serving.batching import AdaptiveRunner, RowSplitModel, second_session_fits
from kondense.serving.model import ModelInputError, OnnxModel, memory_limit_bytes, resident_bytes
from kondense.serving.server import load_model

from .conftest import Digits, _model, run_all, write_model_dir


def _split(path: Path, parts: int = 2) -> RowSplitModel:
    return RowSplitModel(OnnxModel(path, threads=parts), OnnxModel(path, threads=1), parts=parts)


def test_a_split_batch_answers_as_one_call_on_the_whole_batch(
    digits: Digits, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batching, "SPLIT_ABOVE_S", 0.0)  # split every batch, however fast the model
    for parts in (2, 3):
        model = _split(digits.directory / MODEL_FILE, parts)
        try:
            for rows in range(2, 9):
                batch = digits.inputs[:rows]
                result = model.predict({"input": batch})
                assert list(result) == ["logits"]
                np.testing.assert_allclose(result["logits"], digits.reference(batch), rtol=1e-5, atol=1e-6)
            assert model.split_calls == 7
        finally:
            model.close()


def test_one_row_and_fast_batches_run_in_one_call(digits: Digits) -> None:
    """A digits batch takes microseconds: a slice on a helper thread would cost more than the call."""
    model = _split(digits.directory / MODEL_FILE)
    try:
        for rows in (1, 2, 4, 8, 16):
            batch = digits.inputs[:rows]
            np.testing.assert_allclose(
                model.predict({"input": batch}, ["logits"])["logits"],
                digits.reference(batch),
                rtol=1e-5,
                atol=1e-6,
            )
        assert model.split_calls == 0
    finally:
        model.close()


def _pooled_model(directory: Path) -> Path:
    """input [batch, 4] -> the column sums [1, 4]: an output without the rows as its first dimension."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["input", "axes"], ["total"], keepdims=1)],
        "pooled",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [0])],
    )
    model: onnx.ModelProto = _model(graph)
    return write_model_dir(directory, model, "regression") / MODEL_FILE


def test_outputs_that_do_not_keep_the_rows_are_answered_in_one_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batching, "SPLIT_ABOVE_S", 0.0)
    model = _split(_pooled_model(tmp_path / "pooled"))
    batch = np.arange(24, dtype=np.float32).reshape(6, 4)
    try:
        for _ in range(2):  # the first call finds out, the second does not try again
            np.testing.assert_array_equal(
                model.predict({"input": batch})["total"], batch.sum(0, keepdims=True)
            )
        assert model.split_calls == 0
    finally:
        model.close()


@pytest.fixture
def eager_split(digits: Digits, monkeypatch: pytest.MonkeyPatch) -> Iterator[RowSplitModel]:
    """The digits model split in 2, cutting every batch however fast the model; closed afterwards."""
    monkeypatch.setattr(batching, "SPLIT_ABOVE_S", 0.0)
    model = _split(digits.directory / MODEL_FILE)
    yield model
    model.close()


def test_a_slice_that_runtime_rejects_fails_the_call_and_the_model_goes_on(
    digits: Digits, eager_split: RowSplitModel
) -> None:
    model = eager_split
    model.predict({"input": digits.inputs[:2]})  # the time per row is known: the next batch splits
    with pytest.raises(ModelInputError, match="input"):
        model.predict({"input": np.zeros((4, 63), np.float32)})
    batch = digits.inputs[:4]
    np.testing.assert_allclose(
        model.predict({"input": batch})["logits"], digits.reference(batch), rtol=1e-5, atol=1e-6
    )
    assert model.split_calls == 2


def test_the_adaptive_runner_batches_on_the_split_model_and_closes_it(
    digits: Digits, eager_split: RowSplitModel
) -> None:
    model = eager_split
    batches: list[int] = []
    runner = AdaptiveRunner(model, inline_below_s=0.0, lone_inline_below_s=0.0, on_batch=batches.append)
    rows = [digits.inputs[i : i + 1] for i in range(12)]
    results = run_all(runner, rows)
    assert sum(batches) == 12 and max(batches) > 1 and model.split_calls >= 1
    for row, result in zip(rows, results, strict=True):
        np.testing.assert_allclose(result["logits"], digits.reference(row), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="shutdown"):  # closed with the runner: no helper thread left
        model.predict({"input": digits.inputs[:4]})


def test_a_split_needs_two_parts(digits: Digits) -> None:
    path = digits.directory / MODEL_FILE
    with pytest.raises(ValueError, match="at least 2 parts"):
        RowSplitModel(OnnxModel(path), OnnxModel(path, threads=1), parts=1)


@pytest.mark.parametrize(
    ("resident", "cost", "limit", "fits"),
    [
        (100, 50, 200, True),  # 150 <= 160
        (100, 70, 200, False),  # 170 > 160
        (100, 50, None, False),  # no limit known: do not guess
    ],
)
def test_the_second_session_loads_only_when_it_fits(
    resident: int, cost: int, limit: int | None, fits: bool
) -> None:
    assert second_session_fits(resident, cost, limit) is fits


def test_this_process_knows_its_memory() -> None:
    limit = memory_limit_bytes()
    assert resident_bytes() > 10 * 2**20 and limit is not None and limit > resident_bytes()


def _settings(**changes: object) -> ServerSettings:
    fields: dict[str, object] = {"adaptive": True, **changes}
    return ServerSettings(model_name="digits", sha256="0" * 64, **fields)  # type: ignore[arg-type]


def test_kondense_serve_loads_the_second_session_only_when_it_may(
    digits: Digits, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = digits.directory / MODEL_FILE
    caplog.set_level(logging.INFO, logger="kondense.serving.server")
    # a roomy pod, whatever the machine running the test has
    monkeypatch.setattr("kondense.serving.model.memory_limit_bytes", lambda: 4 * resident_bytes() + 2**30)
    split = load_model(path, _settings(), threads=2)
    assert isinstance(split, RowSplitModel) and split.parts == 2
    split.close()
    assert "2 slices side by side" in caplog.text
    assert isinstance(load_model(path, _settings(split_batches=False), threads=2), OnnxModel)
    assert isinstance(load_model(path, _settings(adaptive=False), threads=2), OnnxModel)
    caplog.clear()
    assert isinstance(load_model(path, _settings(split_batches=True), threads=1), OnnxModel)
    assert "batches run as one session call: one intra-op thread" in caplog.text
    caplog.clear()
    fixed = write_model_dir(tmp_path / "fixed", _fixed_batch_model(), "regression") / MODEL_FILE
    assert isinstance(load_model(fixed, _settings(), threads=2), OnnxModel)
    assert "without a dynamic first (batch) dimension" in caplog.text
    caplog.clear()
    monkeypatch.setattr("kondense.serving.model.memory_limit_bytes", lambda: resident_bytes())  # a full pod
    assert isinstance(load_model(path, _settings(), threads=2), OnnxModel)
    assert "does not fit the memory limit" in caplog.text
    forced = load_model(path, _settings(split_batches=True), threads=2)  # the user's call
    assert isinstance(forced, RowSplitModel)
    forced.close()


def _fixed_batch_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["output"])],
        "fixed",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [2, 4])],
    )
    return _model(graph)

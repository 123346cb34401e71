"""The adaptive runner (``kondense serve`` without --max-batch-size/--inference-workers) on a real
ONNX Runtime session: inline while the model is fast, else micro-batches on one worker; answers
equal one session call per request either way."""

from __future__ import annotations

import asyncio
import os

import numpy as np

from kondense.api.artifacts import MODEL_FILE
from kondense.serving.batching import AdaptiveRunner
from kondense.serving.model import OnnxModel, available_cpus

from .conftest import Digits


def _run_all(runner: AdaptiveRunner, rows: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    async def main() -> list[dict[str, np.ndarray]]:
        await runner.start()
        try:
            return await asyncio.gather(*(runner.run({"input": row}, None) for row in rows))
        finally:
            await runner.stop()

    return asyncio.run(main())


def test_a_fast_model_runs_inline(digits: Digits) -> None:
    batches: list[int] = []
    model = OnnxModel(digits.directory / MODEL_FILE, threads=1)
    runner = AdaptiveRunner(model, inline_below_s=10.0, on_batch=batches.append)
    rows = [digits.inputs[i : i + 1] for i in range(8)]
    results = _run_all(runner, rows)
    assert runner.inline and batches == []
    for row, result in zip(rows, results, strict=True):
        np.testing.assert_array_equal(result["logits"], digits.reference(row))


def test_a_slow_model_batches_concurrent_requests_and_splits_the_answers(digits: Digits) -> None:
    batches: list[int] = []
    model = OnnxModel(digits.directory / MODEL_FILE, threads=available_cpus())
    runner = AdaptiveRunner(model, inline_below_s=0.0, max_batch_size=16, on_batch=batches.append)
    rows = [digits.inputs[i : i + 1 + i % 2] for i in range(24)]  # 1 or 2 rows each
    results = _run_all(runner, rows)
    assert not runner.inline
    # all 24 requests arrive before the collector runs: batches of up to 16 rows, every row once
    assert sum(batches) == sum(len(row) for row in rows) and max(batches) > 2 and max(batches) <= 16
    for row, result in zip(rows, results, strict=True):
        np.testing.assert_allclose(result["logits"], digits.reference(row), rtol=1e-5, atol=1e-6)


def test_available_cpus_is_at_least_one() -> None:
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))

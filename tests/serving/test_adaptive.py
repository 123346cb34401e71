"""The adaptive runner (``kondense serve`` without --max-batch-size/--inference-workers) on a real
ONNX Runtime session: inline while the model is fast, else micro-batches on one worker; answers
equal one session call per request either way."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from kondense.api.artifacts import MODEL_FILE
from kondense.serving.batching import AdaptiveRunner, DynamicBatcher
from kondense.serving.model import OnnxModel, available_cpus, spin_config

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


def test_the_batcher_waits_for_as_many_companions_as_recent_batches_had(digits: Digits) -> None:
    """After a batch of 4, the next waits for 4 rows (not max_batch_size): two requests that come in
    after the first two still join their batch; a lone request ends the waiting."""
    batches: list[int] = []
    model = OnnxModel(digits.directory / MODEL_FILE, threads=1)
    # a delay no test reaches: a batch forms when its companions are there, not when the delay ends
    batcher = DynamicBatcher(model, max_batch_size=16, max_delay_s=600.0, on_batch=batches.append)
    rows = [digits.inputs[i : i + 1] for i in range(8)]

    async def main() -> list[dict[str, np.ndarray]]:
        await batcher.start()
        try:
            first = await asyncio.gather(*(batcher.run({"input": row}, None) for row in rows[:4]))
            assert batcher.companion_target() == 4
            early = [asyncio.create_task(batcher.run({"input": row}, None)) for row in rows[4:6]]
            for _ in range(20):  # the collector runs, finds 2 of 4 rows and waits
                await asyncio.sleep(0)
            late = [asyncio.create_task(batcher.run({"input": row}, None)) for row in rows[6:8]]
            second = await asyncio.gather(*early, *late)
            return [*first, *second]
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    assert batches == [4, 4]
    for row, result in zip(rows, results, strict=True):
        np.testing.assert_allclose(result["logits"], digits.reference(row), rtol=1e-5, atol=1e-6)


def test_the_companion_target_follows_the_recent_batches(digits: Digits) -> None:
    batches: list[int] = []
    model = OnnxModel(digits.directory / MODEL_FILE, threads=1)
    batcher = DynamicBatcher(model, max_batch_size=6, max_delay_s=0.01, on_batch=batches.append)

    async def wave(count: int) -> None:
        await asyncio.gather(*(batcher.run({"input": digits.inputs[i : i + 1]}, None) for i in range(count)))

    async def main() -> list[int]:
        await batcher.start()
        targets = [batcher.companion_target()]
        try:
            for count in (3, 2, 9, 1):
                await wave(count)
                targets.append(batcher.companion_target())
        finally:
            await batcher.stop()
        return targets

    # nothing seen yet: no waiting; then the most rows of the recent batches (at most max_batch_size)
    # until a batch waits in vain: then as many as came; after a lone request, no waiting again
    assert asyncio.run(main()) == [1, 3, 2, 3, 1]
    assert batches == [3, 2, 6, 3, 1]


@pytest.mark.parametrize("spin_wait", [True, False])
def test_both_spin_modes_give_the_same_answers(digits: Digits, spin_wait: bool) -> None:
    model = OnnxModel(digits.directory / MODEL_FILE, threads=2, spin_wait=spin_wait)
    batch = digits.inputs[:8]
    np.testing.assert_allclose(
        model.predict({"input": batch})["logits"], digits.reference(batch), rtol=1e-5, atol=1e-6
    )


def test_spinning_threads_stop_when_the_last_call_returns() -> None:
    assert spin_config(True) == {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"}
    assert spin_config(False) == {"session.intra_op.allow_spinning": "0"}


def _slow_runner(digits: Digits, batches: list[int]) -> AdaptiveRunner:
    """A runner that treats the digits model as slow (micro-batches on a worker) but fast enough for a
    lone request to run inline."""
    model = OnnxModel(digits.directory / MODEL_FILE, threads=1)
    return AdaptiveRunner(
        model, inline_below_s=0.0, lone_inline_below_s=10.0, max_batch_size=16, on_batch=batches.append
    )


def test_a_lone_request_runs_inline_and_a_burst_is_still_batched(digits: Digits) -> None:
    batches: list[int] = []
    runner = _slow_runner(digits, batches)
    rows = [digits.inputs[i : i + 1 + (1 <= i <= 2)] for i in range(8)]

    async def main() -> tuple[list[dict[str, np.ndarray]], list[int]]:
        await runner.start()
        inline_after: list[int] = []
        try:
            answers = []
            for row in rows[:3]:  # one client, one request at a time (of 1, then 2 rows)
                answers.append(await runner.run({"input": row}, None))
                inline_after.append(runner.lone_inline_runs)
            answers += await asyncio.gather(*(runner.run({"input": row}, None) for row in rows[3:]))
            inline_after.append(runner.lone_inline_runs)
            return answers, inline_after
        finally:
            await runner.stop()

    answers, inline_after = asyncio.run(main())
    assert not runner.inline  # the model counts as slow: only lone requests skip the batcher
    assert inline_after == [1, 2, 3, 3]  # the burst of 5 did not run inline...
    assert batches == [1, 2, 2, 5]  # ...but as one batch (every session call is a batch in the metric)
    for row, answer in zip(rows, answers, strict=True):
        np.testing.assert_allclose(answer["logits"], digits.reference(row), rtol=1e-5, atol=1e-6)


def test_a_request_that_comes_while_a_batch_runs_is_not_run_inline(digits: Digits) -> None:
    batches: list[int] = []
    runner = _slow_runner(digits, batches)
    rows = [digits.inputs[i : i + 1] for i in range(4)]

    async def main() -> None:
        await runner.start()
        try:
            burst = [asyncio.create_task(runner.run({"input": row}, None)) for row in rows[:3]]
            for _ in range(5):  # the burst is queued and its batch handed to the worker
                await asyncio.sleep(0)
            late = await runner.run({"input": rows[3]}, None)
            np.testing.assert_allclose(late["logits"], digits.reference(rows[3]), rtol=1e-5, atol=1e-6)
            await asyncio.gather(*burst)
        finally:
            await runner.stop()

    asyncio.run(main())
    assert runner.lone_inline_runs == 0 and sum(batches) == 4 and batches[0] == 3


def test_a_model_slower_than_the_lone_limit_never_runs_inline(digits: Digits) -> None:
    batches: list[int] = []
    model = OnnxModel(digits.directory / MODEL_FILE, threads=1)
    runner = AdaptiveRunner(model, inline_below_s=0.0, lone_inline_below_s=0.0, on_batch=batches.append)
    rows = [digits.inputs[i : i + 1] for i in range(3)]

    async def main() -> list[dict[str, np.ndarray]]:
        await runner.start()
        try:
            return [await runner.run({"input": row}, None) for row in rows]
        finally:
            await runner.stop()

    results = asyncio.run(main())
    assert runner.lone_inline_runs == 0 and batches == [1, 1, 1]
    for row, result in zip(rows, results, strict=True):
        np.testing.assert_allclose(result["logits"], digits.reference(row), rtol=1e-5, atol=1e-6)


class _SlowModel:
    """The digits session with a fixed extra cost per call: batches take long enough that the
    requests of other clients queue behind them, as with a compute-bound model."""

    def __init__(self, model: OnnxModel, seconds: float) -> None:
        self._model = model
        self._seconds = seconds
        self.inputs = model.inputs
        self.outputs = model.outputs

    def predict(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        time.sleep(self._seconds)
        return self._model.predict(inputs, outputs)


def test_clients_split_into_two_half_batches_join_again(digits: Digits) -> None:
    """Four clients in a closed loop, then four more that start while the first four's batch runs:
    the second four queue behind it and form the next batch. Counting only recent batch sizes (4),
    the two halves would alternate for good; the batcher waits for the answered clients too (the
    most rows in flight), so all eight run as one batch from the second batch on."""
    batches: list[int] = []
    model = _SlowModel(OnnxModel(digits.directory / MODEL_FILE, threads=1), seconds=0.02)
    batcher = DynamicBatcher(model, max_batch_size=16, max_delay_s=0.5, on_batch=batches.append)
    rounds = 8

    async def client(index: int) -> None:
        row = digits.inputs[index : index + 1]
        for _ in range(rounds):
            result = await batcher.run({"input": row}, None)
            np.testing.assert_allclose(result["logits"], digits.reference(row), rtol=1e-5, atol=1e-6)
            await asyncio.sleep(0.002)  # the answer's way back to the client and its next request's way in

    async def main() -> None:
        await batcher.start()
        try:
            first = [asyncio.create_task(client(i)) for i in range(4)]
            while not batches:  # the first four's batch is running on the worker
                await asyncio.sleep(0.001)
            second = [asyncio.create_task(client(i)) for i in range(4, 8)]
            await asyncio.gather(*first, *second)
        finally:
            await batcher.stop()

    asyncio.run(main())
    # the first four finish a batch ahead of the second four, whose last requests come alone
    assert batches == [4] + [8] * (rounds - 1) + [4]

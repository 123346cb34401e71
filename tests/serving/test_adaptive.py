"""The adaptive runner (``kondense serve`` without --max-batch-size/--inference-workers) on a real
ONNX Runtime session: inline while the model is fast, else micro-batches on one worker; answers
equal one session call per request either way."""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from kondense.api.artifacts import MODEL_FILE
from kondense.serving.batching import MAX_SHARED_DELAY_S, AdaptiveRunner, DynamicBatcher
from kondense.serving.model import OnnxModel, available_cpus, spin_config

from .conftest import Digits, run_all


def test_a_fast_model_runs_inline(digits: Digits) -> None:
    batches: list[int] = []
    model = OnnxModel(digits.directory / MODEL_FILE, threads=1)
    runner = AdaptiveRunner(model, inline_below_s=10.0, on_batch=batches.append)
    rows = [digits.inputs[i : i + 1] for i in range(8)]
    results = run_all(runner, rows)
    assert runner.inline and batches == []
    for row, result in zip(rows, results, strict=True):
        np.testing.assert_array_equal(result["logits"], digits.reference(row))


def test_a_slow_model_batches_concurrent_requests_and_splits_the_answers(digits: Digits) -> None:
    batches: list[int] = []
    model = OnnxModel(digits.directory / MODEL_FILE, threads=available_cpus())
    runner = AdaptiveRunner(model, inline_below_s=0.0, max_batch_size=16, on_batch=batches.append)
    rows = [digits.inputs[i : i + 1 + i % 2] for i in range(24)]  # 1 or 2 rows each
    results = run_all(runner, rows)
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
    """The digits session with an extra cost per call and per row, released like a compute-bound
    session call releases the GIL: batches take long enough that the requests of other clients
    queue behind them. Counts the calls running at once."""

    def __init__(self, model: OnnxModel, seconds: float = 0.0, *, seconds_per_row: float = 0.0) -> None:
        self._model = model
        self._seconds = seconds
        self._seconds_per_row = seconds_per_row
        self.inputs = model.inputs
        self.outputs = model.outputs
        self._lock = threading.Lock()
        self._running = 0
        self.most_at_once = 0

    def predict(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        with self._lock:
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
        try:
            time.sleep(self._seconds + self._seconds_per_row * len(next(iter(inputs.values()))))
            return self._model.predict(inputs, outputs)
        finally:
            with self._lock:
                self._running -= 1


async def _closed_loop(
    batcher: DynamicBatcher, digits: Digits, index: int, rounds: int, pause_s: float = 0.0
) -> None:
    """One client: a request with digit ``index``, its answer checked, ``pause_s``, the next."""
    row = digits.inputs[index : index + 1]
    for _ in range(rounds):
        result = await batcher.run({"input": row}, None)
        np.testing.assert_allclose(result["logits"], digits.reference(row), rtol=1e-5, atol=1e-6)
        if pause_s:
            await asyncio.sleep(pause_s)


def test_clients_split_into_two_half_batches_join_again(digits: Digits) -> None:
    """Four clients in a closed loop, then four more that start while the first four's batch runs:
    the second four queue behind it and form the next batch. Counting only recent batch sizes (4),
    the two halves would alternate for good; the batcher waits for the answered clients too (the
    most rows in flight), so all eight run as one batch from the second batch on."""
    batches: list[int] = []
    model = _SlowModel(OnnxModel(digits.directory / MODEL_FILE, threads=1), seconds=0.02)
    batcher = DynamicBatcher(model, max_batch_size=16, max_delay_s=0.5, on_batch=batches.append)
    rounds = 8

    def client(index: int) -> Coroutine[None, None, None]:
        # 2 ms: the answer's way back to the client and its next request's way in
        return _closed_loop(batcher, digits, index, rounds, pause_s=0.002)

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


def _one_call_at_a_time(
    batcher: DynamicBatcher, rows: list[np.ndarray], rounds: int
) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Clients in a closed loop behind a front end that hands their requests over as grpc.aio does:
    one call at a time, taken from a queue that another thread serves (gRPC core's), then a turn
    for the message to arrive; never two in one turn of the event loop."""
    answers: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
    core: queue.Queue[tuple[np.ndarray, asyncio.Future[dict[str, np.ndarray]]] | None] = queue.Queue()

    async def handle(row: np.ndarray, answer: asyncio.Future[dict[str, np.ndarray]]) -> None:
        answer.set_result(await batcher.run({"input": row}, None, inline_if_lone=True))

    async def front_end() -> None:
        loop = asyncio.get_running_loop()
        handlers = set()
        with ThreadPoolExecutor(1) as poller:
            while (call := await loop.run_in_executor(poller, core.get)) is not None:
                await asyncio.sleep(0.0005)  # the request message's own round trip
                handlers.add(task := asyncio.create_task(handle(*call)))
                task.add_done_callback(handlers.discard)

    async def client(row: np.ndarray) -> None:
        for _ in range(rounds):
            answer = asyncio.get_running_loop().create_future()
            core.put((row, answer))
            answers.append((row, await answer))

    async def main() -> None:
        await batcher.start()
        accepting = asyncio.create_task(front_end())
        try:
            await asyncio.gather(*(client(row) for row in rows))
        finally:
            core.put(None)
            await accepting
            await batcher.stop()

    asyncio.run(main())
    return answers


@pytest.mark.parametrize("probe_every", [4, 10**9])
def test_clients_behind_a_one_call_at_a_time_front_end_are_not_served_one_by_one(
    digits: Digits, probe_every: int
) -> None:
    """Each lone request runs inline and blocks the loop; the front end then hands over the next
    waiting request, alone again: without probing, four concurrent clients are served one at a time
    for good (the control). Every ``probe_every``-th lone request in a row runs on the worker,
    the loop takes the waiting requests in meanwhile and they form batches from then on."""
    batches: list[int] = []
    model = _SlowModel(OnnxModel(digits.directory / MODEL_FILE, threads=1), seconds=0.005)
    batcher = DynamicBatcher(
        model, max_batch_size=16, max_delay_s=0.01, on_batch=batches.append, probe_every=probe_every
    )
    rows = [digits.inputs[i : i + 1] for i in range(4)]
    answers = _one_call_at_a_time(batcher, rows, rounds=8)
    assert sum(batches) == len(answers) == 32
    for row, answer in answers:
        np.testing.assert_allclose(answer["logits"], digits.reference(row), rtol=1e-5, atol=1e-6)
    if probe_every > 32:
        assert batcher.inline_runs == 32 and batches == [1] * 32  # the trap the probe gets out of
    else:
        assert batches[: probe_every + 1] == [1] * (probe_every + 1)  # 4 inline, then the probe
        assert batcher.inline_runs <= probe_every + 2 and max(batches) >= 3


def test_a_batch_waits_a_share_of_its_session_time_for_spread_out_companions(digits: Digits) -> None:
    """Four clients answered by a slow batch come back 1.5 ms apart (a front end that takes calls one
    at a time): with a 1 ms delay alone the batch would start with the first and the rest would
    trail; a tenth of the batch's session time (100 ms per call: 10 ms for 4 rows) keeps them together."""
    batches: list[int] = []
    model = _SlowModel(OnnxModel(digits.directory / MODEL_FILE, threads=1), seconds=0.1)
    batcher = DynamicBatcher(
        model, max_batch_size=16, max_delay_s=0.001, delay_share=0.1, on_batch=batches.append
    )
    rows = [digits.inputs[i : i + 1] for i in range(4)]

    async def main() -> float:
        await batcher.start()
        try:
            await asyncio.gather(*(batcher.run({"input": row}, None) for row in rows))
            delay = batcher.companion_delay(4)
            tasks = []
            for row in rows:
                tasks.append(asyncio.create_task(batcher.run({"input": row}, None)))
                await asyncio.sleep(0.0015)
            await asyncio.gather(*tasks)
            return delay
        finally:
            await batcher.stop()

    delay = asyncio.run(main())
    assert batches == [4, 4]
    assert 0.1 * 0.1 <= delay <= MAX_SHARED_DELAY_S  # a tenth of at least 100 ms, capped
    fixed = DynamicBatcher(model, max_batch_size=16, max_delay_s=0.001)
    assert fixed.companion_delay(4) == 0.001  # without a share: the delay as given


def test_clients_of_a_batcher_with_several_workers_keep_every_worker_busy(digits: Digits) -> None:
    """Eight clients in a closed loop, two workers: the batches share the rows in flight (at most
    four each) and run side by side. Taking every queued row, the first batch took all eight and
    its clients came back together for good: one worker ran batches of eight, the other idled."""
    batches: list[int] = []
    model = _SlowModel(OnnxModel(digits.directory / MODEL_FILE, threads=1), seconds_per_row=0.003)
    batcher = DynamicBatcher(model, max_batch_size=16, max_delay_s=0.002, workers=2, on_batch=batches.append)
    rounds = 6

    async def main() -> None:
        await batcher.start()
        try:
            await asyncio.gather(*(_closed_loop(batcher, digits, i, rounds) for i in range(8)))
        finally:
            await batcher.stop()

    asyncio.run(main())
    assert sum(batches) == 8 * rounds and max(batches) <= 4
    assert model.most_at_once == 2
    assert batcher.batch_share() == 1  # nothing in flight any more

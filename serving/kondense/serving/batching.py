"""How the HTTP layer calls a model: inline, on worker threads, or through a dynamic micro-batcher.

Inline runs the model on the event loop thread: for a model that answers in microseconds a thread
hop costs more than the inference. ``PooledRunner`` runs up to ``workers`` session calls at once on
threads (ONNX Runtime sessions are thread-safe and release the GIL). The ``DynamicBatcher`` works
like Triton's dynamic batcher: it holds a request up to ``max_delay`` for others of the same shape
(counted from when a worker is free to run the batch, not from the request's arrival),
concatenates them along the first dimension, runs one session call per batch on a worker thread (so
the event loop keeps parsing requests) and splits the outputs again; with several workers, batches
run side by side. It is the way past one request per session call for compute-bound models. Unlike
Triton it only waits while traffic is concurrent (the previous batch had more than one row): a lone
client pays no batching delay; and only for as many rows as recent batches had (``c`` clients in a
closed loop never send ``max_batch_size``), not until the delay is over. The adaptive runner lets a
lone request skip the batcher altogether: it runs on the event loop thread, saving the hand-off to a
worker and back (two thread wake-ups and three turns of the loop); every 16th lone request in a row
still goes through the worker, so that clients whose requests a front end hands over one at a time
(gRPC) are seen to be concurrent. Without a fixed delay it waits for companions up to a tenth of the
batch's session time when that is longer than the delay.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice, pairwise
from time import perf_counter
from typing import Protocol

import numpy as np

from kondense.serving.tensors import InferenceModel, InputRejectedError, TensorSpec

RECENT_BATCHES = 8
PROBE_EVERY = 16
"""Lone requests in a row that run inline before one goes through the worker (see ``DynamicBatcher.run``)."""
MAX_SHARED_DELAY_S = 0.025
"""The longest a batch waits for companions when the wait is a share of its session time."""


class BatchSplitError(RuntimeError):
    """The model's outputs do not have the batch as their first dimension."""


def moving_average(average: float, value: float, keep: float) -> float:
    """``keep`` of ``average`` plus the rest of ``value``; ``value`` itself while ``average`` is 0
    (nothing measured yet)."""
    return value if not average else keep * average + (1.0 - keep) * value


class InferenceRunner(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def run(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None
    ) -> dict[str, np.ndarray]: ...


class InlineRunner:
    def __init__(self, model: InferenceModel) -> None:
        self._model = model

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def run(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        return self._model.predict(inputs, outputs)


class PooledRunner:
    def __init__(self, model: InferenceModel, *, workers: int) -> None:
        self._model = model
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="kondense-infer")

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self._executor.shutdown(wait=True)

    async def run(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._model.predict, inputs, outputs)


@dataclass(slots=True)
class _Pending:
    inputs: Mapping[str, np.ndarray]
    rows: int
    signature: tuple[object, ...]
    future: asyncio.Future[dict[str, np.ndarray]] = field(repr=False)


def _batch_rows(inputs: Mapping[str, np.ndarray]) -> int | None:
    """The common first dimension of all inputs, or None when they have none."""
    firsts = {array.shape[0] if array.ndim else None for array in inputs.values()}
    if len(firsts) != 1:
        return None
    return firsts.pop()


class DynamicBatcher:
    def __init__(
        self,
        model: InferenceModel,
        *,
        max_batch_size: int,
        max_delay_s: float,
        workers: int = 1,
        on_batch: Callable[[int], None] | None = None,
        probe_every: int = PROBE_EVERY,
        delay_share: float = 0.0,
    ) -> None:
        """``delay_share``: a batch waits for companions up to this share of the session time it is
        expected to take (at most ``MAX_SHARED_DELAY_S``) when that is longer than ``max_delay_s``."""
        if not_batchable := [spec.name for spec in model.inputs if not spec.shape or spec.shape[0] >= 0]:
            raise ValueError(
                "micro-batching needs a dynamic first (batch) dimension on every input; fixed or missing on: "
                + ", ".join(not_batchable)
            )
        self._model = model
        self._max_batch_size = max_batch_size
        self._max_delay_s = max_delay_s
        self._delay_share = delay_share
        self._row_seconds = 0.0
        """Moving average of a batch's session time per row (timed from the event loop)."""
        self._on_batch = on_batch
        self._pending: deque[_Pending] = deque()
        self._arrival = asyncio.Event()
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="kondense-batch")
        # A batch is only formed when a worker is free: while all are busy, requests pile into bigger batches.
        self._free_workers = asyncio.Semaphore(workers)
        self._recent_rows: deque[int] = deque(maxlen=RECENT_BATCHES)
        """Rows of the last batches: how many companions are worth waiting for."""
        self._workers = workers
        self._one_worker = workers == 1
        self._in_flight_rows = 0
        """Rows queued or in the running batch (the batcher's path, not inline runs)."""
        self._peak_rows = 0
        """The most rows in flight since the last batch formed: with one worker, the clients of the
        batch that just finished are about to send again (a closed loop), so they are worth waiting
        for too; otherwise c clients that once split into two half batches stay split for good."""
        self._peak_off = 0
        """Batches to form before the peak counts again: it last waited in vain (open-loop traffic)."""
        self._running: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._deciding = 0
        """Requests between arriving and choosing the inline path (``run(inline_if_lone=True)``)."""
        self.inline_runs = 0
        """Requests that ran inline, alone, without the batcher (``run(inline_if_lone=True)``)."""
        self._last_requests = 0
        """Requests in the last session call (batched or inline)."""
        self._probe_every = probe_every
        self._inline_streak = 0
        """Inline runs since the last batch formed."""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._collect())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._running:
            await asyncio.wait(self._running)
        self._executor.shutdown(wait=True)

    async def run(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None,
        *,
        inline_if_lone: bool = False,
    ) -> dict[str, np.ndarray]:
        """``inline_if_lone``: a request that finds nothing queued, no batch running and no request
        that came with it (one turn of the event loop later), after a session call for one request,
        runs right here on the event loop thread, as a batch of its own; a burst is still batched.

        Every ``probe_every``-th lone request in a row goes through the worker all the same: while an
        inline call runs, the event loop cannot take in other requests, so a front end that hands
        them over one per turn of the loop (grpc.aio takes each call from gRPC core's queue in a round
        trip through its poller thread) shows concurrent clients as a train of lone requests, each
        run inline while the others wait: c clients served one at a time, never batched. A request
        on the worker leaves the loop free: the waiting requests queue up behind it and the batcher
        takes over. One client pays a thread hand-off every ``probe_every`` requests."""
        loop = asyncio.get_running_loop()
        rows = _batch_rows(inputs)
        if rows is None or rows >= self._max_batch_size:
            # Nothing to gain from waiting for others.
            return await loop.run_in_executor(self._executor, self._model.predict, inputs, outputs)
        if inline_if_lone and self._alone() and self._inline_streak < self._probe_every:
            self._deciding += 1
            try:
                await asyncio.sleep(0)  # requests that arrived with this one get to run() meanwhile
            finally:
                self._deciding -= 1
            if self._alone() and not self._deciding:
                return self._run_inline(inputs, outputs, rows)
        signature = tuple((name, array.dtype.str, array.shape[1:]) for name, array in sorted(inputs.items()))
        pending = _Pending(inputs, rows, signature, loop.create_future())
        self._pending.append(pending)
        self._in_flight_rows += rows
        self._peak_rows = max(self._peak_rows, self._in_flight_rows)
        self._arrival.set()
        try:
            result = await pending.future
        finally:
            self._in_flight_rows -= rows
        return result if outputs is None else {name: result[name] for name in outputs}

    def _alone(self) -> bool:
        return not self._pending and not self._running and self._last_requests <= 1

    def _run_inline(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None, rows: int
    ) -> dict[str, np.ndarray]:
        self.inline_runs += 1
        self._inline_streak += 1
        self._last_requests = 1
        self._recent_rows.append(rows)
        if self._on_batch is not None:
            self._on_batch(rows)
        result = self._model.predict(inputs, None)
        if (error := _split_error(result, rows)) is not None:  # the same answer as in a batch of its own
            raise error
        return result if outputs is None else {name: result[name] for name in outputs}

    def companion_delay(self, target: int) -> float:
        """How long a batch that waits for ``target`` rows may wait: ``max_delay_s``, or a share of the
        session time such a batch takes when that is longer. Companions that travel through a slower
        front end arrive spread out: after a batch of 8 MiniLM rows, gRPC's (``grpc.aio`` takes one
        call at a time from gRPC core) came over 1.3-2 ms on 2 cores, REST's over 0.6 ms; at 2 ms a
        straggler missed its batch and c clients split into smaller batches for good. Waiting a tenth
        of a 55 ms batch to make it whole costs less than the extra session call it saves."""
        if not self._delay_share:
            return self._max_delay_s
        shared = min(MAX_SHARED_DELAY_S, self._delay_share * self._row_seconds * target)
        return max(self._max_delay_s, shared)

    def companion_target(self) -> int:
        """Rows a batch waits for (up to the delay): none after a lone request, else the most any of
        the recent batches had (since a batch last waited in vain), at most ``max_batch_size``. With
        one worker, also the most rows in flight since the last batch formed (queued plus running):
        the clients answered by the batch that just finished send again in a moment."""
        if not self._recent_rows or self._recent_rows[-1] <= 1:
            return 1
        target = max(self._recent_rows)
        if self._one_worker and not self._peak_off:
            target = max(target, self._peak_rows)
        return min(self._max_batch_size, target)

    def _compatible_rows(self) -> int:
        first = self._pending[0]
        rows = 0
        for item in self._pending:
            if item.signature == first.signature:
                if rows + item.rows > self._max_batch_size:
                    break
                rows += item.rows
        return rows

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._arrival.clear()
                await self._arrival.wait()
            await self._free_workers.acquire()
            # Waiting for companions only pays while they are coming: the last batch had some. And only
            # for as many as recent batches had: c closed-loop clients send c, never max_batch_size.
            # The delay counts from when the batch could start: requests queued behind a busy worker have
            # not waited for companions yet. (Counted from their arrival, a few stragglers that missed
            # one batch start the next at once, alone, while the answered clients' next requests are on
            # their way: c clients split into two alternating half batches for good.)
            target = self.companion_target()
            deadline = loop.time() + (self.companion_delay(target) if target > 1 else 0.0)
            while self._compatible_rows() < target and (remaining := deadline - loop.time()) > 0:
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), remaining)
                except TimeoutError:
                    break
            if self._compatible_rows() < target:
                self._recent_rows.clear()  # fewer clients now: wait for as many as came this time
                self._peak_off = RECENT_BATCHES  # nor count the answered clients: they may not come back
            elif self._peak_off:
                self._peak_off -= 1
            batch = self._take_batch()
            self._inline_streak = 0
            self._peak_rows = self._in_flight_rows  # the new batch's rows are in flight until answered
            self._last_requests = len(batch)
            self._recent_rows.append(sum(item.rows for item in batch))
            task = asyncio.create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._free_workers.release()

    def batch_share(self) -> int:
        """Rows one batch may take: ``max_batch_size`` with one worker. With several, the rows in flight
        (queued and running: in a closed loop, about the clients) spread over the workers: c clients
        keep every worker busy instead of piling into one batch on one worker while the others idle
        (with ``--threads 1 --inference-workers 2``, MiniLM at 8 clients went from 96-102 req/s to
        about 56 once the clients had once come back together, and stayed there)."""
        if self._one_worker:
            return self._max_batch_size
        return max(1, min(self._max_batch_size, -(-self._in_flight_rows // self._workers)))

    def _take_batch(self) -> list[_Pending]:
        first = self._pending[0]
        limit = self.batch_share()
        batch = [first]  # the first request goes in whole: run() keeps it under max_batch_size
        rest: deque[_Pending] = deque()
        rows = first.rows
        for item in islice(self._pending, 1, None):
            if item.signature == first.signature and rows + item.rows <= limit:
                batch.append(item)
                rows += item.rows
            else:
                rest.append(item)
        self._pending = rest
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        rows = sum(item.rows for item in batch)
        if self._on_batch is not None:
            self._on_batch(rows)
        if len(batch) == 1:
            feed = batch[0].inputs
        else:
            feed = {name: np.concatenate([item.inputs[name] for item in batch]) for name in batch[0].inputs}
        started = loop.time()
        try:
            result = await loop.run_in_executor(self._executor, self._model.predict, feed, None)
        except InputRejectedError as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            for item in batch:  # one bad request must not fail the others: retry them one by one
                try:
                    _settle(
                        item,
                        await loop.run_in_executor(self._executor, self._model.predict, item.inputs, None),
                    )
                except Exception as single:
                    _settle(item, single)
            return
        except Exception as exc:
            for item in batch:
                _settle(item, exc)
            return
        self._row_seconds = moving_average(self._row_seconds, (loop.time() - started) / max(rows, 1), 0.8)
        if (error := _split_error(result, rows)) is not None:
            for item in batch:
                _settle(item, error)
            return
        start = 0
        for item in batch:
            _settle(item, {name: array[start : start + item.rows] for name, array in result.items()})
            start += item.rows


def _split_error(result: Mapping[str, np.ndarray], rows: int) -> BatchSplitError | None:
    if all(array.ndim and array.shape[0] == rows for array in result.values()):
        return None
    return BatchSplitError(
        "the model's outputs do not keep the batch as their first dimension; serve it without "
        "--max-batch-size"
    )


class _TimedModel:
    """A model whose session calls are timed: a moving average of seconds per call."""

    def __init__(self, model: InferenceModel) -> None:
        self.model = model
        self.seconds = 0.0

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.model.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.model.outputs

    def predict(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        started = perf_counter()
        try:
            return self.model.predict(inputs, outputs)
        finally:
            self.seconds = moving_average(self.seconds, perf_counter() - started, 0.9)


SPLIT_ABOVE_S = 0.001
"""``RowSplitModel`` splits a batch only when it would take at least this long in one call: a slice
on a helper thread costs a thread hand-off (tens of microseconds)."""


class RowSplitModel:
    """One model as two ONNX Runtime sessions: ``wide`` (intra-op threads on every core) answers a
    single row; a batch of several rows is cut into ``parts`` slices that run side by side on
    ``narrow`` (one intra-op thread), one slice per core, and the outputs are joined again.

    On a compute-bound model the cores do more when each works on its own rows than when they share
    every operator of one call: MiniLM on 2 cores (AMD EPYC, ORT 1.32) did 100-102 rows/s in batches
    of 8 on one 2-thread session against 111-120 in two slices of 4 on a 1-thread session, and 82
    rows/s for one row on the 2-thread session against about 56 on one thread. The price is the
    second session's memory (about what the first one takes; ``kondense serve`` only loads it when
    it fits, see ``--split-batches``). A batch that takes less than ``SPLIT_ABOVE_S`` in one call,
    or a model whose outputs do not keep the rows as their first dimension, runs on ``wide``. Built
    for one call at a time (the adaptive runner's one worker); concurrent calls stay correct, their
    slices wait for the helper threads in turn."""

    def __init__(self, wide: InferenceModel, narrow: InferenceModel, *, parts: int) -> None:
        if parts < 2:
            raise ValueError(f"a row split needs at least 2 parts, got {parts}")
        self._wide = wide
        self._narrow = narrow
        self.parts = parts
        self._helpers = ThreadPoolExecutor(parts - 1, thread_name_prefix="kondense-slice")
        self._row_seconds = 0.0
        """Moving average of a batch row's seconds: a batch on ``wide`` counts its time, a split batch
        its time times its slices (what its rows cost on one thread); 0 until the first batch."""
        self._keeps_rows = True
        """False once the outputs turned out not to have the rows as their first dimension."""
        self.split_calls = 0

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._wide.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._wide.outputs

    def predict(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        rows = _batch_rows(inputs)
        if rows is None or rows < 2:  # nothing to cut (and nothing to time: the row time is a batch's)
            return self._wide.predict(inputs, outputs)
        started = perf_counter()
        if not self._keeps_rows or rows * self._row_seconds < SPLIT_ABOVE_S:
            result = self._wide.predict(inputs, outputs)
            self._row_seconds = moving_average(self._row_seconds, (perf_counter() - started) / rows, 0.8)
            return result
        spans = list(pairwise(np.linspace(0, rows, min(self.parts, rows) + 1).astype(int).tolist()))
        slices = [{name: array[start:stop] for name, array in inputs.items()} for start, stop in spans]
        others = [self._helpers.submit(self._narrow.predict, part, outputs) for part in slices[1:]]
        try:
            first = self._narrow.predict(slices[0], outputs)  # this thread runs a slice too
        finally:
            wait(others)  # no slice outlives the call, even a failed one
        results = [first] + [other.result() for other in others]
        if not all(
            array.ndim and array.shape[0] == stop - start
            for result, (start, stop) in zip(results, spans, strict=True)
            for array in result.values()
        ):  # the slices' answers cannot be joined: answer the batch in one call, now and from now on
            self._keeps_rows = False
            return self._wide.predict(inputs, outputs)
        self.split_calls += 1
        per_row = (perf_counter() - started) * len(spans) / rows
        self._row_seconds = moving_average(self._row_seconds, per_row, 0.8)
        return {name: np.concatenate([result[name] for result in results]) for name in first}

    def close(self) -> None:
        self._helpers.shutdown(wait=True)


SPLIT_MEMORY_SHARE = 0.8
"""``kondense serve`` loads the second session of a ``RowSplitModel`` by default only while the
process, with it, stays within this share of its memory limit (``second_session_fits``)."""


def second_session_fits(resident: int, session_bytes: int, limit: int | None) -> bool:
    """Whether a second session that costs ``session_bytes`` (what the first one added to the
    process) fits: ``resident`` plus it within ``SPLIT_MEMORY_SHARE`` of ``limit``; never when the
    limit is unknown."""
    if limit is None:
        return False
    return resident + session_bytes <= SPLIT_MEMORY_SHARE * limit


def batchable(model: InferenceModel) -> bool:
    """Every input has a dynamic first (batch) dimension."""
    return all(spec.shape and spec.shape[0] < 0 for spec in model.inputs)


class AdaptiveRunner:
    """Picks how to run each request from what it sees, for a session that uses every core.

    While the model answers faster than ``inline_below_s`` (a thread hop and a batch would cost more
    than the inference), requests run inline on the event loop. Slower models go through a
    ``DynamicBatcher`` with one worker: a lone client gets the whole machine on its request (all
    intra-op threads, no waiting), concurrent clients pile up while the worker is busy and run as one
    batch on all cores. A lone request (nothing queued or running, none with it) still runs inline
    while the model answers faster than ``lone_inline_below_s``: the event loop has nothing else to
    do meanwhile, and slower calls would keep health and metrics waiting. Models without a batch
    dimension run on one worker thread.
    """

    def __init__(
        self,
        model: InferenceModel,
        *,
        max_batch_size: int = 16,
        max_delay_s: float = 0.002,
        delay_share: float = 0.0,
        inline_below_s: float = 0.0005,
        lone_inline_below_s: float = 0.05,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._timed = _TimedModel(model)
        self._inline_below_s = inline_below_s
        self._lone_inline_below_s = lone_inline_below_s
        self._offloaded: DynamicBatcher | PooledRunner = (
            DynamicBatcher(
                self._timed,
                max_batch_size=max_batch_size,
                max_delay_s=max_delay_s,
                delay_share=delay_share,
                workers=1,
                on_batch=on_batch,
            )
            if batchable(model)
            else PooledRunner(self._timed, workers=1)
        )

    @property
    def inline(self) -> bool:
        return self._timed.seconds < self._inline_below_s

    async def start(self) -> None:
        await self._offloaded.start()

    async def stop(self) -> None:
        await self._offloaded.stop()
        if isinstance(self._timed.model, RowSplitModel):
            self._timed.model.close()

    async def run(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        if self.inline:
            return self._timed.predict(inputs, outputs)
        if isinstance(self._offloaded, DynamicBatcher):
            lone_inline = self._timed.seconds < self._lone_inline_below_s
            return await self._offloaded.run(inputs, outputs, inline_if_lone=lone_inline)
        return await self._offloaded.run(inputs, outputs)

    @property
    def lone_inline_runs(self) -> int:
        """Requests of a slower model that ran inline because they came alone."""
        return self._offloaded.inline_runs if isinstance(self._offloaded, DynamicBatcher) else 0


def _settle(item: _Pending, outcome: dict[str, np.ndarray] | BaseException) -> None:
    if item.future.done():  # the client went away
        return
    if isinstance(outcome, BaseException):
        item.future.set_exception(outcome)
    else:
        item.future.set_result(outcome)

"""Shadow agreement: the live accuracy-delta SLI of a canary.

A sample of the canary's requests is re-sent to the stable server in the background and the two
outputs are compared per sample (mirror mode, issue 13: a stable server copies a sample of its live
requests to a canary that serves no user, and compares the other way round) (row): top-1 for classification, cosine similarity for embeddings,
relative error for regression. The queue is bounded by count and by bytes (request bodies and
outputs it holds): when the stable server is slow or down, comparisons are dropped and counted as
``error`` instead of piling up memory or delaying clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
import numpy as np

from kondense.api.techniques import Task
from kondense.serving.metrics import MIRROR_HEADER, ServerMetrics
from kondense.serving.protocol import HEADER_LENGTH, ProtocolError, decode_response, parse_header_length

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Comparison:
    agree: int
    disagree: int
    scores: np.ndarray | None = None
    """Per-sample cosine (embedding) or relative error (regression)."""


def sample_count(array: np.ndarray, task: Task) -> int:
    """Samples in an output: its first dimension, except a 1-D float vector of one sample's scores."""
    if array.ndim == 0:
        return 1
    if array.ndim == 1 and array.dtype.kind == "f" and task is not Task.REGRESSION:
        return 1
    return int(array.shape[0])


def compare_outputs(
    task: Task,
    canary: Mapping[str, np.ndarray],
    stable: Mapping[str, np.ndarray],
    *,
    cosine_threshold: float,
    rel_error_threshold: float,
) -> Comparison:
    """Compare the first output both servers returned; a differing shape disagrees on every sample."""
    name = next((name for name in canary if name in stable), None)
    first = next(iter(canary.values()))
    rows = sample_count(first, task)
    if name is None:
        return Comparison(0, rows)
    a, b = canary[name], stable[name]
    rows = sample_count(a, task)
    if a.shape != b.shape:
        return Comparison(0, rows)
    a2, b2 = a.reshape(rows, -1), b.reshape(rows, -1)
    if task is Task.CLASSIFICATION or a.dtype.kind not in "iufb":
        if a.dtype.kind == "f":
            same = np.argmax(a2, axis=1) == np.argmax(b2, axis=1)
        else:
            same = np.all(a2 == b2, axis=1)
        agree = int(np.count_nonzero(same))
        return Comparison(agree, rows - agree)
    a64, b64 = a2.astype(np.float64), b2.astype(np.float64)
    if task is Task.EMBEDDING:
        norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
        both_zero = (norms == 0) & np.all(a64 == b64, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = np.where(both_zero, 1.0, np.sum(a64 * b64, axis=1) / norms)
        passed = scores >= cosine_threshold  # NaN compares False: a non-finite output disagrees
    else:
        scale = np.maximum(np.linalg.norm(b64, axis=1), 1e-12)
        scores = np.linalg.norm(a64 - b64, axis=1) / scale
        passed = scores <= rel_error_threshold
    agree = int(np.count_nonzero(passed))
    return Comparison(agree, rows - agree, scores)


def _nbytes(array: np.ndarray) -> int:
    if array.dtype.kind == "O":  # BYTES: the pointers plus the strings they point to
        return int(array.nbytes) + sum(len(value) for value in array.reshape(-1))
    return int(array.nbytes)


@dataclass(slots=True)
class _Job:
    body: bytes
    header_length: int | None
    outputs: dict[str, np.ndarray]
    rows: int
    size: int
    """Bytes held: the body plus the outputs."""


class ShadowComparer:
    """Sends sampled requests to the stable server from a bounded queue and counts the results."""

    def __init__(
        self,
        *,
        stable_url: str,
        model_name: str,
        task: Task,
        sample: float,
        cosine_threshold: float,
        rel_error_threshold: float,
        metrics: ServerMetrics,
        timeout_s: float = 1.0,
        queue_size: int = 128,
        max_queue_bytes: int = 32 * 1024 * 1024,
        concurrency: int = 4,
        mirror_variant: str | None = None,
    ) -> None:
        """``mirror_variant`` set: mirror mode (issue 13) on a stable server. ``stable_url`` is then the
        canary's: the copies carry the mirrored header, the canary's answer is compared as the canary's
        with this server's own outputs, and the results go to kondense_mirror_comparisons_total."""
        self.infer_url = f"{stable_url.rstrip('/')}/v2/models/{model_name}/infer"
        self._mirror = mirror_variant is not None
        self._results = (
            metrics.mirror_comparisons(mirror_variant) if mirror_variant is not None else metrics.shadow
        )
        self._task = task
        self._sample = sample
        self._cosine_threshold = cosine_threshold
        self._rel_error_threshold = rel_error_threshold
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=queue_size)
        self._max_queue_bytes = max_queue_bytes
        self.queued_bytes = 0
        """Bytes of the jobs queued or being compared."""
        self._concurrency = concurrency
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        if not self._mirror:
            metrics.track_shadow_queue(self._queue.qsize, lambda: self.queued_bytes)

    def offer(self, body: bytes, header_length: int | None, outputs: dict[str, np.ndarray]) -> None:
        """Maybe queue a comparison; never blocks. A full queue counts the samples as ``error``."""
        if self.sampled():
            self.enqueue(body, header_length, outputs)

    def sampled(self) -> bool:
        """Whether this request is one of the sample (draw once per request)."""
        return self._sample >= 1.0 or random.random() < self._sample

    def enqueue(self, body: bytes, header_length: int | None, outputs: dict[str, np.ndarray]) -> None:
        """Queue a comparison of a sampled request (a REST body) unless the queue is full."""
        rows = sample_count(next(iter(outputs.values())), self._task)
        size = len(body) + sum(_nbytes(array) for array in outputs.values())
        if self.queued_bytes + size > self._max_queue_bytes:
            self._results["error"].inc(rows)
            return
        try:
            self._queue.put_nowait(_Job(body, header_length, outputs, rows, size))
        except asyncio.QueueFull:
            self._results["error"].inc(rows)
            return
        self.queued_bytes += size

    async def start(self) -> None:
        # aiohttp rather than httpx: about a sixth of the CPU per request, and this runs on the serving loop.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            connector=aiohttp.TCPConnector(limit=self._concurrency),
        )
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._concurrency)]

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        if self._session is not None:
            await self._session.close()

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                comparison = await self._compare(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a worker must outlive any failure of the stable server
                log.debug("shadow comparison failed: %r", exc)
                self._results["error"].inc(job.rows)
            else:
                self._results["agree"].inc(comparison.agree)
                self._results["disagree"].inc(comparison.disagree)
                if comparison.scores is not None and not self._mirror:
                    for score in comparison.scores:
                        self._metrics.shadow_score.observe(float(score))
            finally:
                self.queued_bytes -= job.size

    async def _compare(self, job: _Job) -> Comparison:
        assert self._session is not None
        headers = {"content-type": "application/json"}
        if self._mirror:
            headers[MIRROR_HEADER] = "1"
        if job.header_length is not None:
            headers[HEADER_LENGTH] = str(job.header_length)
        async with self._session.post(self.infer_url, data=job.body, headers=headers) as response:
            content = await response.read()
            if response.status != 200:
                who = "canary" if self._mirror else "stable"
                raise ProtocolError(f"{who} server answered {response.status}: {content[:200]!r}")
            peer = decode_response(
                content, parse_header_length(response.headers.get(HEADER_LENGTH), len(content))
            )
        # shadow: this server is the canary, the peer stable; mirror: the other way round
        canary_outputs, stable_outputs = (peer, job.outputs) if self._mirror else (job.outputs, peer)
        return compare_outputs(
            self._task,
            canary_outputs,
            stable_outputs,
            cosine_threshold=self._cosine_threshold,
            rel_error_threshold=self._rel_error_threshold,
        )

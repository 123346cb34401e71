"""Decoding large request bodies off the event loop.

Turning a large JSON body into arrays holds the GIL for the whole parse (about a second per 16 MB
on a small CPU), so a thread would not keep the loop answering health probes. Large bodies are
decoded in a worker *process* instead; small ones stay inline, where a process hop would cost more
than the parse. The worker runs the same ``decode_request`` (pure, picklable inputs and results).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from kondense.serving.protocol import DecodedRequest, decode_request
from kondense.serving.tensors import TensorSpec
from kondense.serving.validation import RequestLimits

log = logging.getLogger(__name__)


class DecoderUnavailableError(RuntimeError):
    """The decode worker died (e.g. killed for memory); a new one is started for the next request."""


def _warm() -> int:
    return 0


def _worker_init(parent: int) -> None:
    """In each worker: leave signals to the server (it stops the workers after its graceful shutdown,
    whether the signal reached only it, as in Kubernetes, or its whole process group) and exit if the
    server dies without stopping them (SIGKILL, OOM)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="kondense-decode-orphan-watch", daemon=True).start()


class ProcessDecoder:
    """``decode_request`` on ``workers`` spawned processes (spawn: the server has threads)."""

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(os.getpid(),),
        )

    async def start(self) -> None:
        self._pool = self._new_pool()
        # Start every worker now (imports included), not on the first large request.
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, _warm) for _ in range(self._workers)))

    async def stop(self) -> None:
        """Stop the workers and wait for them: none may outlive the server (they share its stdout)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    async def decode(
        self,
        body: bytes,
        header_length: int | None,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        allow_non_finite: bool,
        limits: RequestLimits,
    ) -> DecodedRequest:
        pool = self._pool
        if pool is None:
            raise DecoderUnavailableError("the decode worker is not running")
        try:
            future = pool.submit(
                decode_request,
                body,
                header_length,
                tuple(inputs),
                tuple(outputs),
                allow_non_finite=allow_non_finite,
                limits=limits,
            )
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            log.error("the decode worker process died; starting a new one")
            if self._pool is pool:
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
            raise DecoderUnavailableError(
                "the decode worker process died while decoding this request"
            ) from None

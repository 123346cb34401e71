"""Decoding large request bodies off the event loop.

Turning a large JSON body into arrays holds the GIL for the whole parse (about a second per 16 MB
on a small CPU), so a thread would not keep the loop answering health probes. Large bodies are
decoded in worker *processes* instead; small ones stay inline, where a process hop would cost more
than the parse. A worker (``python -m kondense.serving.decode_worker``) runs the same pure
``decode_request``; requests and results travel as length-prefixed pickles over its stdin/stdout.

Plain child processes rather than ``multiprocessing``: no resource-tracker process, nothing left
behind. A worker ignores SIGINT/SIGTERM (the server stops it after its graceful shutdown, whether the
signal reached only the server, as in Kubernetes, or its whole process group) and exits when its
stdin closes, which also happens when the server dies without stopping it (SIGKILL, OOM kill).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import struct
import sys
from collections.abc import Sequence
from typing import Any

from kondense.serving.protocol import DecodedRequest
from kondense.serving.tensors import TensorSpec
from kondense.serving.validation import RequestError, RequestLimits

log = logging.getLogger(__name__)

FRAME = struct.Struct("<Q")
READY = b"R"
STOP_TIMEOUT_S = 10.0


class DecoderUnavailableError(RuntimeError):
    """No decode worker could answer (one died, e.g. killed for memory; a new one replaces it)."""


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def spawn(cls) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kondense.serving.decode_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**20,
        )
        assert process.stdout is not None
        if await process.stdout.read(1) != READY:  # imports done
            await process.wait()
            raise DecoderUnavailableError(
                f"the decode worker exited with {process.returncode} while starting"
            )
        return cls(process)

    async def call(self, payload: bytes) -> Any:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(FRAME.pack(len(payload)))
        stdin.write(payload)
        await stdin.drain()
        (size,) = FRAME.unpack(await stdout.readexactly(FRAME.size))
        return pickle.loads(await stdout.readexactly(size))

    async def stop(self) -> None:
        process = self.process
        if process.stdin is not None:
            process.stdin.close()  # EOF: the worker exits
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


class ProcessDecoder:
    """``decode_request`` on ``workers`` child processes, one request per worker at a time."""

    def __init__(self, workers: int) -> None:
        self._count = workers
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all: set[_Worker] = set()
        self._stopped = False

    async def start(self) -> None:
        for _ in range(self._count):
            await self._add()

    async def _add(self) -> None:
        worker = await _Worker.spawn()
        self._all.add(worker)
        if self._stopped:  # stop() ran while this one was starting
            await self._retire(worker)
            return
        self._idle.put_nowait(worker)

    async def _retire(self, worker: _Worker) -> None:
        self._all.discard(worker)
        await worker.stop()

    async def stop(self) -> None:
        """Stop every worker and wait for it: none may outlive the server."""
        self._stopped = True
        await asyncio.gather(*(self._retire(worker) for worker in list(self._all)))

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
        payload = pickle.dumps(
            (body, header_length, tuple(inputs), tuple(outputs), allow_non_finite, limits),
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        worker = await self._idle.get()
        try:
            outcome, value = await worker.call(payload)
        except (OSError, EOFError, asyncio.IncompleteReadError, pickle.UnpicklingError) as exc:
            log.error("a decode worker died (%s); starting a new one", exc)
            await self._retire(worker)
            if not self._stopped:
                await self._add()
            raise DecoderUnavailableError("the decode worker died while decoding this request") from None
        except BaseException:  # cancelled mid-exchange: the pipe may hold half a frame
            await self._retire(worker)
            if not self._stopped:
                await self._add()
            raise
        self._idle.put_nowait(worker)
        if outcome == "ok":
            assert isinstance(value, DecodedRequest)
            return value
        if outcome == "request-error":
            raise RequestError(value)
        raise RuntimeError(f"the decode worker failed: {value}")

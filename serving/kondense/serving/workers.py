"""Several server processes on one port: ``kondense serve --workers N``.

One event loop does a small model's whole request (HTTP, JSON, the session call, metrics) on one
core: digits (an MLP, a few µs in ONNX Runtime) answers about 5,000 requests/s at 8 clients on a 2-core
machine with the loop at 100% of a core and the other core nearly idle. ``--workers N`` runs N complete
servers, each its own process with its own session, sharing the HTTP port (one listening socket, bound
here and inherited) and the gRPC port (``SO_REUSEPORT``, the kernel spreads connections).

- The parent (``serve_workers``) only supervises: it binds the port, starts the workers, passes on
  SIGTERM/SIGINT, and when a worker ends on its own (a model that fails to load, a crash) it stops the
  others and exits non-zero, so that the pod restarts instead of serving with fewer workers than asked.
- A worker takes connections once its model is loaded (``ModelServer`` waits for the load before the
  listeners start), so every answer comes from a ready server.
- ``/metrics`` on any worker answers for all of them: the worker asks its siblings for their
  expositions over a Unix socket each (``WorkerGroup``) and adds them up (``merge_expositions``).
  Request limits (``--max-concurrent-requests``, ``--max-inflight-bytes``, ``--max-connections``)
  and the shadow queue are per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterable, Sequence
from multiprocessing.connection import wait
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Metric, generate_latest
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from kondense.serving.app import ModelServer, ServerSettings
    from kondense.serving.artifact import CheckedArtifact
    from kondense.serving.server import ListenOptions

log = logging.getLogger(__name__)

_LOWEST = frozenset({"kondense_model_ready", "process_start_time_seconds"})
"""Gauges whose sum over workers means nothing: ready only when every worker is; started with the first."""
_HIGHEST = frozenset({"process_max_fds", "python_info"})
WORKERS_METRIC = "kondense_serving_workers"
SIBLING_TIMEOUT_S = 2.0
"""How long ``/metrics`` waits for a sibling's exposition; one that does not answer is left out (logged)."""


def _merged_value(name: str, values: list[float]) -> float:
    if name.endswith("_created") or name in _LOWEST:
        return min(values)
    if name.endswith("_info") or name in _HIGHEST:
        return max(values)
    return sum(values)


def merge_expositions(texts: Sequence[str]) -> bytes:
    """Prometheus text expositions of the workers as one: counters, histograms and most gauges added
    up; ``*_created`` and the start time the earliest; ready the lowest (1 only when every worker is);
    info series and the fd limit the highest. Families and series keep the order they first appear in.
    ``kondense_serving_workers`` says how many expositions there were (a scrape that left a worker
    out shows)."""
    families: dict[str, Metric] = {}
    values: dict[tuple[str, str, tuple[tuple[str, str], ...]], list[float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            for sample in family.samples:
                key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                values.setdefault(key, []).append(sample.value)
    for (family_name, sample_name, labels), seen in values.items():
        families[family_name].add_sample(sample_name, dict(labels), _merged_value(sample_name, seen))
    counted = Metric(
        WORKERS_METRIC, "Worker processes whose metrics this scrape adds up (--workers).", "gauge"
    )
    counted.add_sample(WORKERS_METRIC, {}, float(len(texts)))
    families[WORKERS_METRIC] = counted

    class _Merged:
        def collect(self) -> Iterable[Metric]:
            return families.values()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry)


class WorkerGroup:
    """One worker's view of its siblings: it serves its own exposition on ``<directory>/<index>.sock``
    (a front end of its ``ModelServer``, started with the others once the model is loaded) and reads
    the others' for ``/metrics``."""

    def __init__(self, directory: Path, index: int, workers: int) -> None:
        self.directory = directory
        self.index = index
        self.workers = workers
        self._server: asyncio.AbstractServer | None = None
        self._model_server: ModelServer | None = None

    def socket_path(self, index: int) -> Path:
        return self.directory / f"{index}.sock"

    async def start(self, server: ModelServer) -> None:
        self._model_server = server
        path = self.socket_path(self.index)
        path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._answer, path=str(path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self.socket_path(self.index).unlink(missing_ok=True)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            assert self._model_server is not None
            writer.write(self._model_server.own_exposition())
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _sibling(self, index: int) -> str | None:
        try:
            return await asyncio.wait_for(self._read(self.socket_path(index)), SIBLING_TIMEOUT_S)
        except (FileNotFoundError, ConnectionRefusedError):
            return None  # not loaded yet (it has answered nothing) or gone (the parent stops everything)
        except (OSError, TimeoutError) as exc:
            log.warning("worker %d's metrics are left out of this scrape: %s", index, exc or "timed out")
            return None

    @staticmethod
    async def _read(path: Path) -> str:
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            return (await reader.read()).decode()
        finally:
            writer.close()

    async def exposition(self, own: bytes) -> bytes:
        """Every worker's metrics as one exposition (this worker's ``own`` and its siblings')."""
        others = [i for i in range(self.workers) if i != self.index]
        answers = await asyncio.gather(*(self._sibling(i) for i in others))
        return merge_expositions([own.decode(), *(text for text in answers if text is not None)])


# --- the supervisor ------------------------------------------------------------------------------


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _check_port_free(host: str, port: int, what: str) -> None:
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise RuntimeError(f"the {what} {host}:{port} cannot be opened: {exc.strerror or exc}") from None


def _bind(host: str, port: int) -> socket.socket:
    try:
        sock = socket.create_server((host, port), family=_family(host), backlog=2048)
    except OSError as exc:
        raise RuntimeError(f"the HTTP port {host}:{port} cannot be opened: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _worker_main(
    index: int,
    sockets: list[socket.socket],
    artifact: CheckedArtifact,
    settings: ServerSettings,
    listen: ListenOptions,
    threads: int | None,
    spin_wait: bool,
    directory: str,
    workers: int,
) -> None:
    logging.basicConfig(
        level=logging.INFO, format=f"%(levelname)s:     [worker {index}] %(name)s: %(message)s"
    )
    from kondense.serving.model import available_cpus
    from kondense.serving.server import serve_one

    if threads is None:  # each worker its share of the CPUs
        cpus = available_cpus()
        threads = max(1, cpus // workers)
        log.info(
            "ONNX Runtime intra-op threads: %d of the %d CPUs available, for each of %d workers",
            threads,
            cpus,
            workers,
        )
    group = WorkerGroup(Path(directory), index, workers)
    code = serve_one(artifact, settings, listen, threads, spin_wait, sockets=sockets, group=group)
    raise SystemExit(code)


def serve_workers(
    artifact: CheckedArtifact,
    settings: ServerSettings,
    listen: ListenOptions,
    threads: int | None,
    spin_wait: bool,
) -> int:
    """Run ``listen.workers`` server processes on the same ports until SIGTERM/SIGINT; returns the exit code:
    0 after a requested stop, 1 when a worker ended on its own (the others are stopped then)."""
    try:
        directory = tempfile.mkdtemp(prefix=f"kondense-workers-{os.getpid()}-")
    except OSError as exc:
        log.error("--workers needs a writable temporary directory for the workers' metrics sockets "
                  "(TMPDIR, else /tmp): %s", exc)  # fmt: skip
        return 1
    try:
        sock = _bind(listen.host, listen.port)
        if listen.grpc_port is not None:
            _check_port_free(listen.host, listen.grpc_port, "gRPC port")
    except RuntimeError as exc:
        log.error("%s", exc)
        shutil.rmtree(directory, ignore_errors=True)
        return 1
    workers = listen.workers
    context = multiprocessing.get_context("spawn")  # no fork: the parent's threads and state stay its own
    processes = [
        context.Process(
            target=_worker_main,
            args=(index, [sock], artifact, settings, listen, threads, spin_wait, directory, workers),
            name=f"kondense-worker-{index}",
        )
        for index in range(workers)
    ]
    stopping: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    failed: list[str] = []
    try:
        for process in processes:
            process.start()
        host, port = sock.getsockname()[:2]
        log.info(
            "%d workers (pids %s) on %s:%d", workers, ", ".join(str(p.pid) for p in processes), host, port
        )
        while not stopping:
            if ended := wait([p.sentinel for p in processes], timeout=0.2):
                gone = [p for p in processes if p.sentinel in ended]
                for process in gone:  # its pipe closes a moment before it can be reaped
                    process.join(5)
                failed = [f"{p.name} (pid {p.pid}) exited with code {p.exitcode}" for p in gone]
                break
        if failed:
            log.error("stopping every worker: %s", "; ".join(failed))
        _stop(processes, listen.graceful_timeout_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)
    if failed:
        return 1
    # uvicorn ends a server stopped by a signal with that signal again (its default action)
    clean = (0, -signal.SIGTERM, -signal.SIGINT)
    if unclean := [f"{p.name} exited with code {p.exitcode}" for p in processes if p.exitcode not in clean]:
        log.error("after the stop: %s", "; ".join(unclean))
        return 1
    return 0


def _stop(processes: Sequence[Any], grace_s: float) -> None:
    """SIGTERM to every live worker (each finishes its requests within ``grace_s``), then SIGKILL."""
    for process in processes:
        if process.is_alive():
            process.terminate()  # SIGTERM
    deadline = time.monotonic() + grace_s + 10
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.warning("%s did not stop within %.0f s; killing it", process.name, grace_s + 10)
            process.kill()
            process.join()

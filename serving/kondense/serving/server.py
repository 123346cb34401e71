"""Run one model behind uvicorn: check the artifact, load the model, serve until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from kondense.serving.app import ServerSettings, build_app
from kondense.serving.artifact import CheckedArtifact
from kondense.serving.tensors import InferenceModel

if TYPE_CHECKING:
    from kondense.serving.workers import WorkerGroup

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ListenOptions:
    host: str = "0.0.0.0"
    port: int = 8080
    graceful_timeout_s: int = 30
    """How long in-flight requests may take to finish after SIGTERM."""
    grpc_port: int | None = None
    """The Open Inference Protocol over gRPC on this port too (off when None)."""
    workers: int = 1
    """Server processes sharing the ports (``workers.serve_workers``)."""


def _http_protocol() -> type[asyncio.Protocol] | str:
    """httptools with one send per response when httptools is installed, else uvicorn's choice."""
    try:
        from kondense.serving.http_protocol import CoalescingHttpToolsProtocol
    except ImportError:  # httptools missing: uvicorn falls back to h11
        return "auto"
    return CoalescingHttpToolsProtocol


GRPC_EXPERIMENTS = "GRPC_EXPERIMENTS"
GRPC_CORE_DEFAULTS = "-event_engine_listener"
"""gRPC core's experiments the server turns off unless ``GRPC_EXPERIMENTS`` says otherwise (gRPC's
documented switch, read once when grpc is imported). With the EventEngine listener, gRPC core reads
an accepted connection on its own threads and hands every event on to the ``grpc.aio`` poller: on
2 cores a unary call with nothing to compute took 0.42 ms at c=1 against 0.25 ms with the listener
it had before (h2load, an echo server); at c=8 the same. A gRPC release where the EventEngine
listener costs no extra hop, or where the experiment is gone, makes this unnecessary."""


def grpc_core_settings() -> str | None:
    """Set gRPC core's defaults for this process before grpc is imported; returns the experiments
    in force, or None when grpc was imported already (they can no longer change)."""
    if "grpc" in sys.modules:
        return None
    return os.environ.setdefault(GRPC_EXPERIMENTS, GRPC_CORE_DEFAULTS)


def load_model(
    path: Path, settings: ServerSettings, threads: int | None, spin_wait: bool = False
) -> InferenceModel:
    """The ONNX Runtime session(s) for ``path``: one session with ``threads`` intra-op threads (the
    CPUs available when None), warmed up; with the adaptive runner also a second, one-thread session
    that batches run on in slices (``RowSplitModel``) when ``settings.split_batches`` asks for it or,
    left unset, when it fits the memory limit."""
    from kondense.serving.batching import RowSplitModel, batchable, second_session_fits
    from kondense.serving.model import OnnxModel, available_cpus, memory_limit_bytes, resident_bytes

    intra_op = threads or available_cpus()
    log.info("ONNX Runtime intra-op threads: %d%s", intra_op, "" if threads else " (the CPUs available)")
    before = resident_bytes()
    model = OnnxModel(path, threads=intra_op, spin_wait=spin_wait)
    model.warm_up()
    session_bytes = max(resident_bytes() - before, path.stat().st_size)  # at least model.onnx itself
    if not settings.adaptive or settings.split_batches is False:
        return model
    asked = settings.split_batches is True
    why_not = None
    if intra_op < 2:
        why_not = "one intra-op thread"
    elif not batchable(model):
        why_not = "an input without a dynamic first (batch) dimension"
    elif not asked and not second_session_fits(resident_bytes(), session_bytes, memory_limit_bytes()):
        why_not = (
            f"a second session (about {session_bytes / 2**20:.0f} MiB) does not fit the memory limit; "
            "--split-batches loads it all the same"
        )
    if why_not is not None:
        (log.warning if asked else log.info)("batches run as one session call: %s", why_not)
        return model
    narrow = OnnxModel(path, threads=1, spin_wait=spin_wait)
    narrow.warm_up()
    log.info(
        "batches of several rows run as %d slices side by side on a second, one-thread session (about %.0f MiB)",
        intra_op,
        session_bytes / 2**20,
    )
    return RowSplitModel(model, narrow, parts=intra_op)


def serve(
    artifact: CheckedArtifact,
    settings: ServerSettings,
    listen: ListenOptions,
    threads: int | None,
    spin_wait: bool = False,
) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code (non-zero if the model never loaded,
    or, with several workers, when one of them ended on its own)."""
    if listen.workers > 1:
        from kondense.serving.workers import serve_workers

        return serve_workers(artifact, settings, listen, threads, spin_wait)
    return serve_one(artifact, settings, listen, threads, spin_wait)


def serve_one(
    artifact: CheckedArtifact,
    settings: ServerSettings,
    listen: ListenOptions,
    threads: int | None,
    spin_wait: bool = False,
    *,
    sockets: list[socket.socket] | None = None,
    group: WorkerGroup | None = None,
) -> int:
    """One server process: on ``sockets`` (bound by the parent) as one of ``group`` when given, else
    on ``listen``'s host and port."""
    fatal: list[str] = []

    def load() -> InferenceModel:
        return load_model(artifact.model_path, settings, threads, spin_wait)

    def on_fatal(message: str) -> None:
        log.error("%s", message)
        fatal.append(message)
        server.should_exit = True

    front_ends = []
    if listen.grpc_port is not None:
        experiments = grpc_core_settings()
        from kondense.serving.grpc_server import GrpcFrontEnd  # grpcio: imported only when asked for

        if experiments is not None:
            log.info("gRPC core experiments: %s (%s)", experiments, GRPC_EXPERIMENTS)

        host = f"[{listen.host}]" if ":" in listen.host else listen.host
        front_ends.append(
            GrpcFrontEnd(
                f"{host}:{listen.grpc_port}", grace_s=listen.graceful_timeout_s, shared_port=group is not None
            )
        )
    app = build_app(settings, load, on_fatal, front_ends, group)
    config = uvicorn.Config(
        app,
        host=listen.host,
        port=listen.port,
        loop="auto",  # uvloop and httptools when installed (the serving extra installs them)
        http=_http_protocol(),
        lifespan="on",
        access_log=False,  # one log line per request would cost more than the inference
        proxy_headers=False,  # nothing reads the client address: no X-Forwarded-For rewriting per request
        timeout_graceful_shutdown=listen.graceful_timeout_s,
        limit_concurrency=settings.max_connections,
        log_level="info",
    )
    server = uvicorn.Server(config)
    server.run(sockets)
    return 1 if fatal else 0

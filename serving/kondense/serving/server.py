"""Run one model behind uvicorn: check the artifact, load the model, serve until SIGTERM."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import uvicorn

from kondense.serving.app import ServerSettings, build_app
from kondense.serving.artifact import CheckedArtifact
from kondense.serving.tensors import InferenceModel

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ListenOptions:
    host: str = "0.0.0.0"
    port: int = 8080
    graceful_timeout_s: int = 30
    """How long in-flight requests may take to finish after SIGTERM."""


def serve(
    artifact: CheckedArtifact, settings: ServerSettings, listen: ListenOptions, threads: int | None
) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code (non-zero if the model never loaded)."""
    fatal: list[str] = []

    def load_model() -> InferenceModel:
        from kondense.serving.model import OnnxModel  # onnxruntime: imported only when serving

        model = OnnxModel(artifact.model_path, threads=threads)
        model.warm_up()
        return model

    def on_fatal(message: str) -> None:
        log.error("%s", message)
        fatal.append(message)
        server.should_exit = True

    app = build_app(settings, load_model, on_fatal)
    config = uvicorn.Config(
        app,
        host=listen.host,
        port=listen.port,
        loop="auto",  # uvloop and httptools when installed (the serving extra installs them)
        http="auto",
        lifespan="on",
        access_log=False,  # one log line per request would cost more than the inference
        timeout_graceful_shutdown=listen.graceful_timeout_s,
        limit_concurrency=settings.max_connections,
        log_level="info",
    )
    server = uvicorn.Server(config)
    server.run()
    return 1 if fatal else 0

"""``kondense serve``: the ONNX Runtime model server. Imports nothing heavy until the command runs."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.models import OptionInfo

from kondense.api.techniques import Task

_EPILOG = (
    "--inject-latency-ms and --inject-error-rate are for tests and demos only (the rollback scenario "
    "uses them to make a canary breach its SLIs); so is --inject-logit-scale (the drift scenario)."
)


def _fail(message: str) -> typer.Exit:
    print(f"kondense serve: error: {message}", file=sys.stderr)
    return typer.Exit(2)


def _at_least(minimum: float, help: str) -> OptionInfo:
    """A numeric option with a floor (typer refuses a smaller value, naming the option)."""
    return typer.Option(min=minimum, help=help)


def serve(
    model: Annotated[Path, typer.Option("--model", help="Directory holding model.onnx and manifest.json.")],
    name: Annotated[str, typer.Option("--name", help="Model name in the /v2/models/{name} URLs.")],
    variant: Annotated[str, typer.Option(help="Value of the 'variant' label on all metrics.")] = "stable",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8080,
    grpc_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Also serve the Open Inference Protocol over gRPC (KServe v2 GRPCInferenceService) on "
            "this port (default: no gRPC; the operator's pods use 8081).",
        ),
    ] = None,
    threads: Annotated[
        int | None,
        _at_least(
            1,
            "ONNX Runtime intra-op threads (default: the CPUs the process may use, cgroup CPU quota "
            "included; the operator passes the pod's CPU limit).",
        ),
    ] = None,
    workers: Annotated[
        int,
        _at_least(
            1,
            "Server processes sharing the port(s), each with its own session: for a small model whose "
            "requests keep one core busy with HTTP and JSON (the rest of the CPUs idle), set it to the "
            "cores. Each worker holds the model in memory, has its own request limits and, without "
            "--threads, an equal share of the CPUs.",
        ),
    ] = 1,
    spin_wait: Annotated[
        bool,
        typer.Option(
            "--spin-wait/--no-spin-wait",
            help="Let ONNX Runtime intra-op threads spin while a session call is in flight (they stop "
            "when it returns): lower latency for a compute-bound model on CPUs nothing else uses; much "
            "slower on shared or quota-limited CPUs.",
        ),
    ] = False,
    expected_sha256: Annotated[
        str | None,
        typer.Option(
            "--expected-sha256",
            help="The artifact digest recorded when it was built (the operator passes status' sha256): "
            "model.onnx and its external data must match it and the manifest, or the server never gets "
            "ready. Required unless --no-verify.",
        ),
    ] = None,
    no_verify: Annotated[
        bool,
        typer.Option(
            "--no-verify",
            help="Local use only: serve without --expected-sha256, without a manifest.json or with a "
            "digest mismatch (logged).",
        ),
    ] = False,
    shadow_of: Annotated[
        str | None,
        typer.Option(
            help="Base URL of the stable server (e.g. http://stable:8080) to compare a sample against."
        ),
    ] = None,
    mirror_to: Annotated[
        str | None,
        typer.Option(
            help="Mirror first (a stable server): base URL of a canary (e.g. http://canary:8080) to copy "
            "a sample of live requests to; its answers are discarded and compared with this server's."
        ),
    ] = None,
    mirror_sample: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Fraction of live requests mirrored (default 1.0)."),
    ] = None,
    mirror_variant: Annotated[
        str | None,
        typer.Option(help="The variant mirrored to: label `canary` of kondense_mirror_comparisons_total."),
    ] = None,
    shadow_sample: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Fraction of requests compared (default 1.0).")
    ] = None,
    task: Annotated[
        Task | None,
        typer.Option(
            help="What the first output is (default: the manifest's task): how shadow outputs are "
            "compared and what kondense_output_confidence observes (top-1 confidence for classification, "
            "L2 norm for embedding, nothing for regression)."
        ),
    ] = None,
    shadow_cosine_threshold: Annotated[
        float, typer.Option(min=-1.0, max=1.0, help="Embeddings agree at this cosine similarity or above.")
    ] = 0.99,
    shadow_rel_error_threshold: Annotated[
        float, _at_least(0.0, "Regression outputs agree at this relative error or below.")
    ] = 0.05,
    shadow_timeout_ms: Annotated[
        float, _at_least(1.0, "A stable answer slower than this counts as a shadow error.")
    ] = 1000.0,
    max_body_bytes: Annotated[int, _at_least(1, "Larger request bodies (after decompression) get 413.")] = 64
    * 1024
    * 1024,
    max_json_bytes: Annotated[
        int,
        _at_least(
            1,
            "Larger JSON parts of a request get 413 (a JSON tensor costs ~30x its text in memory; "
            "large tensors travel as binary data).",
        ),
    ] = 8 * 1024 * 1024,
    max_elements: Annotated[int, _at_least(1, "Tensor elements per request (all inputs); more get 400.")] = 16
    * 1024
    * 1024,
    max_concurrent_requests: Annotated[
        int, _at_least(1, "Inference requests admitted at once; more get 503 + Retry-After.")
    ] = 64,
    max_inflight_bytes: Annotated[
        int,
        _at_least(
            1, "Request body bytes (decompressed) held by admitted requests; over it: 503 + Retry-After."
        ),
    ] = 256 * 1024 * 1024,
    decode_workers: Annotated[
        int,
        _at_least(
            0,
            "Processes decoding large bodies off the event loop (health probes keep answering); "
            "0 decodes on the loop.",
        ),
    ] = 1,
    decode_offload_bytes: Annotated[
        int, _at_least(0, "Bodies with a JSON part this large or larger go to a decode worker.")
    ] = 1024 * 1024,
    max_connections: Annotated[
        int,
        _at_least(1, "uvicorn's limit_concurrency: beyond this many connections+tasks, 503."),
    ] = 1024,
    shadow_max_queue_bytes: Annotated[
        int,
        _at_least(0, "Bytes the shadow queue may hold (bodies + outputs); beyond it samples count as error."),
    ] = 32 * 1024 * 1024,
    max_batch_size: Annotated[
        int | None,
        _at_least(
            1,
            "Micro-batch up to this many rows per session call (1 = no batching). Without it and "
            "--inference-workers the server adapts: inline while the model answers in under 0.5 ms, "
            "else micro-batches of up to 16 rows on one session call at a time using every thread.",
        ),
    ] = None,
    max_batch_delay_ms: Annotated[
        float | None,
        _at_least(
            0.0,
            "How long a request may wait for others to batch with (only while requests arrive "
            "concurrently: a lone client is never delayed). Default: 2 ms, and when the server adapts, "
            "up to a tenth of the batch's session time (at most 25 ms) when that is longer.",
        ),
    ] = None,
    inference_workers: Annotated[
        int | None,
        _at_least(
            1,
            "Session calls run at once on worker threads (1 without batching: inline on the event loop, "
            "best for tiny models). With --threads 1, set it to the cores to use.",
        ),
    ] = None,
    split_batches: Annotated[
        bool | None,
        typer.Option(
            "--split-batches/--no-split-batches",
            help="When the server adapts: run a batch of several rows as one slice per core, side by "
            "side, on a second ONNX Runtime session with one thread (a compute-bound model does more "
            "per core that way; a single row still gets every thread). Costs that session's memory, "
            "about what the first one took. Default: on with 2 or more threads when the process stays "
            "within 80% of its memory limit (cgroup memory.max, else the machine's free memory).",
        ),
    ] = None,
    allow_non_finite: Annotated[
        bool, typer.Option("--allow-non-finite", help="Pass NaN/Infinity inputs to the model instead of 400.")
    ] = False,
    graceful_timeout_s: Annotated[
        int, _at_least(0, "After SIGTERM, seconds in-flight requests may take to finish.")
    ] = 30,
    inject_latency_ms: Annotated[
        float, _at_least(0.0, "Tests/demos only: add this delay to every inference.")
    ] = 0.0,
    inject_error_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Tests/demos only: answer this fraction with HTTP 500.")
    ] = 0.0,
    inject_logit_scale: Annotated[
        float,
        typer.Option(
            min=0.001,
            help="Tests/demos only: multiply the first output's logits by this (a probability output in "
            "log space): the argmax stays, the confidences shift.",
        ),
    ] = 1.0,
) -> None:
    """Serve one ONNX model over the Open Inference Protocol v2 (KServe/Triton REST, and gRPC with
    --grpc-port) with metrics."""
    from urllib.parse import urlsplit

    from kondense.serving.app import ServerSettings, ShadowSettings
    from kondense.serving.artifact import ArtifactError, check_artifact
    from kondense.serving.server import ListenOptions
    from kondense.serving.server import serve as run_server

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    if shadow_of is None and shadow_sample is not None:
        raise _fail("--shadow-sample only applies with --shadow-of")
    if mirror_to is None and (mirror_sample is not None or mirror_variant is not None):
        raise _fail("--mirror-sample and --mirror-variant only apply with --mirror-to")
    if mirror_to is not None and shadow_of is not None:
        raise _fail("--mirror-to (a stable server) and --shadow-of (a canary) cannot be combined")
    if split_batches and (max_batch_size is not None or inference_workers is not None):
        raise _fail(
            "--split-batches applies when the server adapts; drop --max-batch-size and --inference-workers "
            "(with them, --threads 1 --inference-workers N runs N calls side by side)"
        )
    if split_batches and threads == 1:
        raise _fail("--split-batches needs 2 or more --threads: one slice per thread")
    if workers > 1 and grpc_port == 0:
        raise _fail(
            "--workers needs a fixed --grpc-port: with 0 every worker would take a gRPC port of its own"
        )
    if max_inflight_bytes < max_body_bytes:
        raise _fail(
            f"--max-inflight-bytes {max_inflight_bytes} is below --max-body-bytes {max_body_bytes}: "
            "the largest allowed request could never be admitted"
        )
    try:
        artifact = check_artifact(model, verify=not no_verify, expected_sha256=expected_sha256)
    except ArtifactError as exc:
        raise _fail(f"{exc}; refusing to serve") from None

    shadow = None
    if shadow_of is not None:
        url = urlsplit(shadow_of)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise _fail(f"--shadow-of {shadow_of!r} is not an http(s) base URL like http://stable:8080")
        shadow_task = task or (artifact.manifest.task if artifact.manifest else None)
        if shadow_task is None:
            raise _fail("--task is needed with --shadow-of when the model directory has no manifest.json")
        shadow = ShadowSettings(
            stable_url=shadow_of,
            task=shadow_task,
            sample=1.0 if shadow_sample is None else shadow_sample,
            cosine_threshold=shadow_cosine_threshold,
            rel_error_threshold=shadow_rel_error_threshold,
            timeout_s=shadow_timeout_ms / 1000.0,
            max_queue_bytes=shadow_max_queue_bytes,
        )
    mirror = None
    if mirror_to is not None:
        url = urlsplit(mirror_to)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise _fail(f"--mirror-to {mirror_to!r} is not an http(s) base URL like http://canary:8080")
        mirror_task = task or (artifact.manifest.task if artifact.manifest else None)
        if mirror_task is None:
            raise _fail("--task is needed with --mirror-to when the model directory has no manifest.json")
        mirror = ShadowSettings(
            stable_url=mirror_to,
            task=mirror_task,
            sample=1.0 if mirror_sample is None else mirror_sample,
            cosine_threshold=shadow_cosine_threshold,
            rel_error_threshold=shadow_rel_error_threshold,
            timeout_s=shadow_timeout_ms / 1000.0,
            max_queue_bytes=shadow_max_queue_bytes,
            mirror_variant=mirror_variant or "canary",
        )
    settings = ServerSettings(
        model_name=name,
        sha256=artifact.sha256,
        variant=variant,
        verified=artifact.verified,
        max_body_bytes=max_body_bytes,
        max_json_bytes=max_json_bytes,
        max_elements=max_elements,
        max_concurrent_requests=max_concurrent_requests,
        max_inflight_bytes=max_inflight_bytes,
        decode_workers=decode_workers,
        decode_offload_bytes=decode_offload_bytes,
        max_connections=max_connections,
        allow_non_finite=allow_non_finite,
        max_batch_size=max_batch_size or 1,
        max_batch_delay_s=None if max_batch_delay_ms is None else max_batch_delay_ms / 1000.0,
        inference_workers=inference_workers or 1,
        adaptive=max_batch_size is None and inference_workers is None,
        split_batches=split_batches,
        inject_latency_s=inject_latency_ms / 1000.0,
        inject_error_rate=inject_error_rate,
        inject_logit_scale=inject_logit_scale,
        task=task or (artifact.manifest.task if artifact.manifest else None),
        shadow=shadow,
        mirror=mirror,
    )
    if grpc_port is not None and grpc_port == port and port != 0:
        raise _fail(f"--grpc-port {grpc_port} is the HTTP --port; give gRPC its own port")
    listen = ListenOptions(
        host=host, port=port, graceful_timeout_s=graceful_timeout_s, grpc_port=grpc_port, workers=workers
    )
    code = run_server(artifact, settings, listen, threads, spin_wait)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("serve", epilog=_EPILOG)(serve)

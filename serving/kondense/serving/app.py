"""The HTTP layer: Open Inference Protocol v2 REST endpoints and ``/metrics`` on Starlette.

Knows nothing of ONNX Runtime: it gets a loader returning an ``InferenceModel`` and calls it
through an ``InferenceRunner`` (inline or micro-batched).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from time import perf_counter
from typing import TYPE_CHECKING, Protocol

import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from kondense.api.techniques import Task
from kondense.serving.batching import (
    AdaptiveRunner,
    DynamicBatcher,
    InferenceRunner,
    InlineRunner,
    PooledRunner,
)
from kondense.serving.confidence import MEASURES, observations, scale_logits
from kondense.serving.decoding import DecoderUnavailableError, ProcessDecoder
from kondense.serving.metrics import MIRROR_HEADER, ConfidenceHistogram, ServerMetrics
from kondense.serving.protocol import (
    HEADER_LENGTH,
    VARIANT_HEADER,
    DecodedRequest,
    decode_request,
    encode_response,
    parse_header_length,
)
from kondense.serving.shadow import ShadowComparer
from kondense.serving.tensors import InferenceModel, InputRejectedError
from kondense.serving.validation import RequestError, RequestLimits

if TYPE_CHECKING:
    from kondense.serving.workers import WorkerGroup

log = logging.getLogger(__name__)

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    stable_url: str
    task: Task
    sample: float = 1.0
    cosine_threshold: float = 0.99
    rel_error_threshold: float = 0.05
    timeout_s: float = 1.0
    max_queue_bytes: int = 32 * 1024 * 1024
    """Bytes of request bodies and outputs waiting in the shadow queue; over it, samples are dropped."""
    mirror_variant: str | None = None
    """Mirror mode (``ServerSettings.mirror``): ``stable_url`` is the canary's, this names its variant."""


MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerSettings:
    model_name: str
    sha256: str
    variant: str = "stable"
    platform: str = "onnxruntime_onnx"
    model_version: str = "1"
    verified: bool = True
    max_body_bytes: int = 64 * MiB
    """A request body (after decompression) larger than this gets 413."""
    max_json_bytes: int = 8 * MiB
    """The JSON part of a request: parsing JSON costs ~30x its size in memory; send large tensors binary."""
    max_elements: int = 16 * MiB
    """Tensor elements per request, summed over its inputs."""
    max_concurrent_requests: int = 64
    """Inference requests admitted at once; more get 503 with Retry-After."""
    max_inflight_bytes: int = 256 * MiB
    """Bytes of request bodies (read and decompressed) held by admitted requests; over it: 503."""
    decode_offload_bytes: int = 1 * MiB
    """Bodies whose JSON part is at least this large are decoded in a worker process."""
    decode_workers: int = 1
    """Worker processes for large bodies; 0 decodes everything on the event loop."""
    max_connections: int = 1024
    """uvicorn's limit_concurrency: connections plus tasks beyond it get 503 from uvicorn itself."""
    allow_non_finite: bool = False
    max_batch_size: int = 1
    max_batch_delay_s: float | None = None
    """How long a batch waits for companions; None: ``DEFAULT_BATCH_DELAY_S``, and the adaptive
    runner waits up to ``ADAPTIVE_DELAY_SHARE`` of the batch's session time when that is longer."""
    inference_workers: int = 1
    """Concurrent session calls; 1 without batching runs the model inline on the event loop."""
    adaptive: bool = False
    """Ignore max_batch_size/inference_workers: inline while the model is fast, else micro-batches on
    one worker whose session uses every core (``AdaptiveRunner``)."""
    split_batches: bool | None = None
    """With ``adaptive``: run a batch of several rows as one slice per core on a second, one-thread
    session (``RowSplitModel``); None: when the second session fits (``second_session_fits``)."""
    inject_latency_s: float = 0.0
    """Tests and demos only: a fixed delay added to every inference."""
    inject_error_rate: float = 0.0
    """Tests and demos only: this fraction of inference requests is answered 500."""
    inject_logit_scale: float = 1.0
    """Tests and demos only: the first output's logits times this (argmax kept, confidences shifted)."""
    task: Task | None = None
    """What the first output is (the manifest's task): decides the confidence histogram (none: off)."""
    shadow: ShadowSettings | None = None
    mirror: ShadowSettings | None = None
    """Mirror first (issue 13): copy a sample of live requests to a canary and compare its answers."""


RETRY_AFTER_S = 1
ADAPTIVE_MAX_BATCH = 16
DEFAULT_BATCH_DELAY_S = 0.002
ADAPTIVE_DELAY_SHARE = 0.1


class ClientError(Exception):
    """A request refused with an HTTP status (the gRPC front end maps it to a status code)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
"""A REST answer: status, body and raw response headers (content-length included)."""

_JSON_TYPE = (b"content-type", JSON.encode())
_BINARY_TYPE = (b"content-type", b"application/octet-stream")
_MIRROR = MIRROR_HEADER.encode()
_HEADER_LENGTH = HEADER_LENGTH.encode()
_WANTED_HEADERS = frozenset((b"content-length", b"content-encoding", _HEADER_LENGTH, _MIRROR))


def _error(status: int, message: str) -> Answer:
    content = orjson.dumps({"error": message})
    headers = [(b"content-length", str(len(content)).encode()), _JSON_TYPE]
    if status == 503:
        headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
    return status, content, headers


def _wanted_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The request headers the inference handler reads, in one pass over the ASGI list (names are
    lower case in ASGI); the first of repeated headers counts, as in Starlette's ``Headers.get``."""
    found: dict[bytes, bytes] = {}
    for name, value in raw:
        if name in _WANTED_HEADERS and name not in found:
            found[name] = value
    return found


class RawResponse(Response):
    """A Starlette response whose raw headers are given whole (no per-response header assembly)."""

    def __init__(self, status: int, raw_headers: list[tuple[bytes, bytes]], content: bytes) -> None:
        self.status_code = status
        self.body = content
        self.background = None
        self.raw_headers = raw_headers


def error_response(status: int, message: str) -> Response:
    status, content, headers = _error(status, message)
    return RawResponse(status, headers, content)


class ByteBudget:
    """Bytes held by requests in flight, bounded; the event loop is its only user."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size


class Reservation:
    """One request's share of the byte budget, given back when its response is made."""

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.size = 0

    def take(self, size: int) -> None:
        if not self._budget.take(size):
            raise ClientError(
                503,
                f"the server is busy: request bodies in flight would exceed {self._budget.limit} bytes "
                "(--max-inflight-bytes); retry later",
            )
        self.size += size

    def release(self) -> None:
        self._budget.give(self.size)
        self.size = 0


def _json(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, media_type=JSON)


class FrontEnd(Protocol):
    """Another protocol serving the same model (gRPC): started before the model loads (health
    answers meanwhile; a worker of several starts it after), stopped after the HTTP server drained."""

    async def start(self, server: ModelServer) -> None: ...

    async def stop(self) -> None: ...


class ModelServer:
    """State and handlers of one served model: ready only after the loader returned a model."""

    def __init__(
        self,
        settings: ServerSettings,
        load_model: Callable[[], InferenceModel],
        on_fatal: Callable[[str], None],
        front_ends: Sequence[FrontEnd] = (),
        group: WorkerGroup | None = None,
    ) -> None:
        self.settings = settings
        self._front_ends = list(front_ends) if group is None else [group, *front_ends]
        self._group = group
        self.metrics = ServerMetrics(settings.model_name, settings.variant)
        self.metrics.set_model(settings.sha256, ready=False)
        self._load_model = load_model
        self._on_fatal = on_fatal
        self.model: InferenceModel | None = None
        self._runner: InferenceRunner | None = None
        self._shadow: ShadowComparer | None = None
        self._mirror: ShadowComparer | None = None
        self._decoder: ProcessDecoder | None = None
        self._limits = RequestLimits(max_elements=settings.max_elements)
        self._budget = ByteBudget(settings.max_inflight_bytes)
        self._in_flight = 0
        self._has_bytes_inputs = False
        self._confidence: ConfidenceHistogram | None = None
        self._first_output = ""
        self._variant_header = (VARIANT_HEADER.encode(), settings.variant.encode())
        try:
            self._server_version = version("kondense")
        except PackageNotFoundError:
            self._server_version = "unknown"

    @property
    def ready(self) -> bool:
        return self._runner is not None

    @property
    def runner(self) -> InferenceRunner | None:
        return self._runner

    @property
    def shadow(self) -> ShadowComparer | None:
        return self._shadow

    @property
    def mirror(self) -> ShadowComparer | None:
        return self._mirror

    @property
    def limits(self) -> RequestLimits:
        return self._limits

    @property
    def server_version(self) -> str:
        return self._server_version

    def model_problem(self, name: str, wanted: str | None) -> str | None:
        """Why a model name/version is not served here (None when it is)."""
        if name != self.settings.model_name:
            return f"model '{name}' is not served here; this server serves '{self.settings.model_name}'"
        if wanted and wanted != self.settings.model_version:
            return (
                f"model '{name}' has no version '{wanted}'; served version: '{self.settings.model_version}'"
            )
        return None

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        started: list[FrontEnd] = []
        # Load in the background: liveness answers while a large model loads. A worker of several
        # (``workers``) loads first: uvicorn opens its listeners after the lifespan started, so the
        # worker takes connections only once it can answer them (its siblings take them meanwhile).
        loading = asyncio.create_task(self._load())
        try:
            if self._group is not None:
                await loading
            if self._group is None or self.ready:
                for front_end in self._front_ends:
                    try:
                        await front_end.start(self)
                    except Exception as exc:
                        self._on_fatal(str(exc))
                        break
                    started.append(front_end)
            yield
        finally:
            for front_end in started:
                await front_end.stop()
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            runner, self._runner = self._runner, None
            self.metrics.set_model(self.settings.sha256, ready=False)
            if runner is not None:
                await runner.stop()
            for comparer in (self._shadow, self._mirror):
                if comparer is not None:
                    await comparer.stop()
            if self._decoder is not None:
                await self._decoder.stop()

    async def _load(self) -> None:
        settings = self.settings
        try:
            model = await asyncio.to_thread(self._load_model)
            runner: InferenceRunner
            given = settings.max_batch_delay_s
            delay = DEFAULT_BATCH_DELAY_S if given is None else given
            if settings.adaptive:
                runner = AdaptiveRunner(
                    model,
                    max_batch_size=max(settings.max_batch_size, ADAPTIVE_MAX_BATCH),
                    max_delay_s=delay,
                    delay_share=ADAPTIVE_DELAY_SHARE if given is None else 0.0,
                    on_batch=self.metrics.batch_rows.observe,
                )
            elif settings.max_batch_size > 1:
                runner = DynamicBatcher(
                    model,
                    max_batch_size=settings.max_batch_size,
                    max_delay_s=delay,
                    workers=settings.inference_workers,
                    on_batch=self.metrics.batch_rows.observe,
                )
            elif settings.inference_workers > 1:
                runner = PooledRunner(model, workers=settings.inference_workers)
            else:
                runner = InlineRunner(model)
        except Exception as exc:  # any load failure must stop the server, not leave it half-alive
            self._on_fatal(f"model '{settings.model_name}' failed to load: {exc}")
            return
        if settings.shadow is not None:
            self._shadow = ShadowComparer(
                stable_url=settings.shadow.stable_url,
                model_name=settings.model_name,
                task=settings.shadow.task,
                sample=settings.shadow.sample,
                cosine_threshold=settings.shadow.cosine_threshold,
                rel_error_threshold=settings.shadow.rel_error_threshold,
                metrics=self.metrics,
                timeout_s=settings.shadow.timeout_s,
                max_queue_bytes=settings.shadow.max_queue_bytes,
            )
            await self._shadow.start()
        if settings.mirror is not None:
            self._mirror = ShadowComparer(
                stable_url=settings.mirror.stable_url,
                model_name=settings.model_name,
                task=settings.mirror.task,
                sample=settings.mirror.sample,
                cosine_threshold=settings.mirror.cosine_threshold,
                rel_error_threshold=settings.mirror.rel_error_threshold,
                metrics=self.metrics,
                timeout_s=settings.mirror.timeout_s,
                max_queue_bytes=settings.mirror.max_queue_bytes,
                mirror_variant=settings.mirror.mirror_variant or "canary",
            )
            await self._mirror.start()
        if settings.decode_workers > 0:
            self._decoder = ProcessDecoder(settings.decode_workers)  # stopped by the lifespan in any case
            try:
                await self._decoder.start()
            except Exception as exc:
                self._on_fatal(f"the decode worker process could not start: {exc}")
                return
        self._has_bytes_inputs = any(spec.datatype == "BYTES" for spec in model.inputs)
        measure = MEASURES.get(settings.task) if settings.task is not None else None
        if measure is not None and model.outputs:
            self._first_output = model.outputs[0].name
            self._confidence = self.metrics.confidence(measure)
        await runner.start()
        self.model = model
        self._runner = runner
        self.metrics.set_model(settings.sha256, ready=True)
        log.info(
            "model '%s' (%s, sha256 %s) is ready", settings.model_name, settings.variant, settings.sha256
        )

    # --- health and metadata -------------------------------------------------------------------

    async def live(self, _request: Request) -> Response:
        return _json({"live": True})

    async def server_ready(self, _request: Request) -> Response:
        return _json({"ready": self.ready}, 200 if self.ready else 503)

    async def server_metadata(self, _request: Request) -> Response:
        return _json(
            {"name": "kondense", "version": self._server_version, "extensions": ["binary_tensor_data"]}
        )

    def _check_name(self, request: Request) -> Response | None:
        problem = self.model_problem(request.path_params["name"], request.path_params.get("version"))
        return None if problem is None else error_response(404, problem)

    async def model_ready(self, request: Request) -> Response:
        if (problem := self._check_name(request)) is not None:
            return problem
        return _json({"name": self.settings.model_name, "ready": self.ready}, 200 if self.ready else 503)

    async def model_metadata(self, request: Request) -> Response:
        if (problem := self._check_name(request)) is not None:
            return problem
        model = self.model
        if model is None or not self.ready:
            return error_response(503, f"model '{self.settings.model_name}' is not ready yet")
        settings = self.settings
        return _json(
            {
                "name": settings.model_name,
                "versions": [settings.model_version],
                "platform": settings.platform,
                "inputs": [spec.metadata() for spec in model.inputs],
                "outputs": [spec.metadata() for spec in model.outputs],
                "parameters": {
                    "variant": settings.variant,
                    "sha256": settings.sha256,
                    "verified": settings.verified,
                },
            }
        )

    async def metrics_endpoint(self, _request: Request) -> Response:
        own = self.own_exposition()
        body = own if self._group is None else await self._group.exposition(own)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    def own_exposition(self) -> bytes:
        """This process's metrics (with ``--workers``, ``/metrics`` adds up every worker's)."""
        return generate_latest(self.metrics.registry)

    # --- inference -------------------------------------------------------------------------------

    def answered(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every successful inference's outputs, REST or gRPC, before they are encoded: the demo's
        logit scaling, then the confidence histogram (observed on the event loop's next turn, after the
        answer has left: right after a session call each of its numpy calls costs tens of µs, which a
        lone client would otherwise wait for)."""
        if self.settings.inject_logit_scale != 1.0 and self._first_output:
            outputs = scale_logits(outputs, self.settings.inject_logit_scale, [self._first_output])
        if self._confidence is not None:
            asyncio.get_running_loop().call_soon(self._observe_confidence, self._confidence, outputs)
        return outputs

    def _observe_confidence(self, histogram: ConfidenceHistogram, outputs: dict[str, np.ndarray]) -> None:
        try:
            histogram.observe_many(observations(self.settings.task, self._first_output, outputs))
        except Exception:  # a callback's error would only reach the loop's handler: say which
            log.exception("the confidence histogram could not observe an answer")

    async def infer(self, request: Request) -> Response:
        """The Starlette route of the inference URLs the fast path does not take (another name, or a
        version in the URL that is not the served one): the same handler, after the name check."""
        problem = self.model_problem(request.path_params["name"], request.path_params.get("version"))
        status, content, headers = await self.infer_rest(request.scope["headers"], request.receive, problem)
        return RawResponse(status, headers, content)

    async def infer_rest(
        self, raw_headers: Iterable[tuple[bytes, bytes]], receive: Receive, problem: str | None = None
    ) -> Answer:
        """One REST inference of the served model (``problem``: why the URL's model is not served
        here, answered 404): its status, body and raw response headers. Every answer, client error or
        not, is counted in kondense_requests_total (a mirrored copy in kondense_mirrored_requests_total
        instead: it answers no user); never raises."""
        started = perf_counter()
        headers = _wanted_headers(raw_headers)
        # Only a canary takes mirrored copies: on stable the header is ignored, so no client can keep its
        # requests out of the SLIs the relative gates, the bake and the burn-rate alerts read from stable.
        mirrored = self.settings.variant != "stable" and headers.get(_MIRROR) == b"1"
        try:
            if problem is not None:
                answer = _error(404, problem)
            else:
                answer = await self._admit(headers, receive, mirrored)
        except Exception:  # a bug must still be an answer on a healthy connection, and be counted
            log.exception("inference request failed")
            answer = _error(500, "internal server error while answering the request (see the server log)")
        if mirrored:
            self.metrics.observe_mirrored(answer[0], perf_counter() - started)
        else:
            self.metrics.observe_request(answer[0], perf_counter() - started, "rest")
        return answer

    @contextlib.contextmanager
    def admitted(self) -> Iterator[Reservation]:
        """One inference request's admission (gRPC's; REST's ``_admit`` makes the same two calls,
        ``_enter`` and ``_leave``): bounded in number, and the bytes it holds bounded by the in-flight
        budget. Raises ``ClientError(503)`` when busy."""
        self._enter()
        reservation = Reservation(self._budget)
        try:
            yield reservation
        finally:
            self._leave(reservation)

    def _enter(self) -> None:
        limit = self.settings.max_concurrent_requests
        if self._in_flight >= limit:
            raise ClientError(
                503,
                f"the server is busy: {limit} inference requests are in flight (--max-concurrent-requests)",
            )
        self._in_flight += 1

    def _leave(self, reservation: Reservation) -> None:
        self._in_flight -= 1
        reservation.release()

    async def _admit(self, headers: dict[bytes, bytes], receive: Receive, mirrored: bool) -> Answer:
        # ``admitted`` written out: a generator-based context manager costs a few µs a request
        try:
            self._enter()
        except ClientError as exc:
            return _error(exc.status, str(exc))
        reservation = Reservation(self._budget)
        try:
            return await self._infer(headers, receive, reservation, mirrored)
        except ClientError as exc:
            return _error(exc.status, str(exc))
        finally:
            self._leave(reservation)

    async def _infer(
        self, headers: dict[bytes, bytes], receive: Receive, reservation: Reservation, mirrored: bool
    ) -> Answer:
        model, runner, settings = self.model, self._runner, self.settings
        if model is None or runner is None:
            return _error(503, f"model '{settings.model_name}' is not ready yet")
        try:
            body = await self._read_body(headers, receive, reservation)
            length = headers.get(_HEADER_LENGTH)
            header_length = parse_header_length(
                None if length is None else length.decode("latin-1"), len(body)
            )
            decoded = await self._decode(body, header_length, model)
        except ClientError as exc:
            return _error(exc.status, str(exc))
        except RequestError as exc:
            return _error(400, str(exc))
        except DecoderUnavailableError as exc:
            return _error(503, f"{exc}; retry later")

        if settings.inject_latency_s:
            await asyncio.sleep(settings.inject_latency_s)
        if settings.inject_error_rate and random.random() < settings.inject_error_rate:
            return _error(500, "injected error (--inject-error-rate, for tests and demos only)")
        try:
            outputs = await runner.run(decoded.inputs, decoded.outputs)
        except InputRejectedError as exc:
            return _error(400, f"the model rejected the inputs: {exc}")
        except Exception as exc:
            log.exception("inference failed")
            return _error(500, f"inference failed: {exc}")
        outputs = self.answered(outputs)
        try:
            content, response_header_length = encode_response(
                settings.model_name, settings.model_version, decoded.id, outputs, decoded.binary_outputs
            )
        except RequestError as exc:
            return _error(400, str(exc))
        if not mirrored:  # a mirrored copy is never shadowed back nor mirrored on
            for comparer in (self._shadow, self._mirror):
                if comparer is not None:
                    comparer.offer(body, header_length, outputs)
        # Which track answered (the metrics' `variant` label): clients, benchmarks and session affinity
        # can tell a canary answer from a stable one without timing heuristics.
        length_bytes = str(len(content)).encode()
        if response_header_length is None:
            return 200, content, [(b"content-length", length_bytes), _JSON_TYPE, self._variant_header]
        return (
            200,
            content,
            [
                (b"content-length", length_bytes),
                _BINARY_TYPE,
                self._variant_header,
                (_HEADER_LENGTH, str(response_header_length).encode()),
            ],
        )

    async def _decode(self, body: bytes, header_length: int | None, model: InferenceModel) -> DecodedRequest:
        settings = self.settings
        json_bytes = len(body) if header_length is None else header_length
        if json_bytes > settings.max_json_bytes:
            raise ClientError(
                413,
                f"the JSON part of the request is {json_bytes} bytes, over the limit of {settings.max_json_bytes} "
                "(--max-json-bytes); send large tensors as binary data (binary_data_size)",
            )
        threshold = settings.decode_offload_bytes
        large = json_bytes >= threshold or (self._has_bytes_inputs and len(body) >= threshold)
        if self._decoder is not None and large:
            return await self._decoder.decode(
                body,
                header_length,
                model.inputs,
                model.outputs,
                allow_non_finite=settings.allow_non_finite,
                limits=self._limits,
            )
        return decode_request(
            body,
            header_length,
            model.inputs,
            model.outputs,
            allow_non_finite=settings.allow_non_finite,
            limits=self._limits,
        )

    async def _read_body(
        self, headers: dict[bytes, bytes], receive: Receive, reservation: Reservation
    ) -> bytes:
        limit = self.settings.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ClientError(
                413,
                f"request body of {declared.decode()} bytes is over the limit of {limit} bytes (--max-body-bytes)",
            )
        encoding = headers.get(b"content-encoding", b"identity").decode("latin-1").lower()
        if encoding not in ("identity", "gzip", "deflate"):
            raise ClientError(
                415, f"Content-Encoding {encoding!r} is not supported (gzip, deflate or identity)"
            )
        chunks = []
        size = 0
        while True:  # the ASGI messages themselves: what Starlette's Request.stream() reads
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect
                raise ClientError(400, "the client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise ClientError(
                        413, f"request body is over the limit of {limit} bytes (--max-body-bytes)"
                    )
                reservation.take(len(chunk))
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        del chunks
        if encoding == "identity":
            return body
        return await self._inflate(body, encoding, reservation)

    async def _inflate(self, body: bytes, encoding: str, reservation: Reservation) -> bytes:
        """Inflate in slices: bounded by --max-body-bytes and the in-flight budget, yielding to the loop."""
        limit = self.settings.max_body_bytes
        # gzip: 16 + window bits; "deflate" in HTTP means the zlib format.
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        pieces: list[bytes] = []
        size = 0
        pending = body
        try:
            while not inflater.eof:
                piece = inflater.decompress(pending, _INFLATE_SLICE)
                pending = inflater.unconsumed_tail
                size += len(piece)
                if size > limit:
                    raise ClientError(
                        413,
                        f"decompressed request body is over the limit of {limit} bytes (--max-body-bytes)",
                    )
                reservation.take(len(piece))
                pieces.append(piece)
                if not pending and len(piece) < _INFLATE_SLICE:
                    break  # all input consumed and no output pending
                await asyncio.sleep(0)
        except zlib.error as exc:
            raise ClientError(400, f"request body is not valid {encoding} data: {exc}") from None
        if not inflater.eof:
            raise ClientError(400, f"request body is truncated {encoding} data")
        return b"".join(pieces)


_INFLATE_SLICE = 1024 * 1024


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, f"{exc.detail}: {_request.method} {_request.url.path}")


async def _internal_error(_request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", _request.method, _request.url.path, exc_info=exc)
    return error_response(500, "internal server error (see the server log)")


def build_app(
    settings: ServerSettings,
    load_model: Callable[[], InferenceModel],
    on_fatal: Callable[[str], None],
    front_ends: Sequence[FrontEnd] = (),
    group: WorkerGroup | None = None,
) -> InferFastPath:
    server = ModelServer(settings, load_model, on_fatal, front_ends, group)
    model_paths = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    routes = [
        Route("/v2/health/live", server.live, methods=["GET"]),
        Route("/v2/health/ready", server.server_ready, methods=["GET"]),
        Route("/v2", server.server_metadata, methods=["GET"]),
        Route("/metrics", server.metrics_endpoint, methods=["GET"]),
    ]
    for path in model_paths:
        routes += [
            Route(path, server.model_metadata, methods=["GET"]),
            Route(f"{path}/ready", server.model_ready, methods=["GET"]),
            Route(f"{path}/infer", server.infer, methods=["POST"]),
        ]
    app = Starlette(
        routes=routes,
        lifespan=server.lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    app.state.server = server
    return InferFastPath(app, server)


class InferFastPath:
    """ASGI entry point: the served model's inference URLs go straight to ``ModelServer.infer_rest``,
    everything else (other names and versions, health, metadata, metrics, lifespan) through Starlette.

    For a model that answers in microseconds Starlette's middleware layers and router cost a good part
    of the request; the handler is the same either way (same answers, errors, metrics, shadowing), and
    it never raises."""

    def __init__(self, app: Starlette, server: ModelServer) -> None:
        self.app = app
        self.server = server
        name, version = server.settings.model_name, server.settings.model_version
        self._paths = frozenset((f"/v2/models/{name}/infer", f"/v2/models/{name}/versions/{version}/infer"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in self._paths
            and not scope.get("root_path")
        ):
            status, content, headers = await self.server.infer_rest(scope["headers"], receive)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})
            return
        await self.app(scope, receive, send)

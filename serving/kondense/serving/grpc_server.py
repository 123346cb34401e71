"""The Open Inference Protocol over gRPC: KServe v2's ``inference.GRPCInferenceService``.

A second front end of the same ``ModelServer`` (same event loop as uvicorn, same runner, admission,
byte budget, validation, metrics and shadow comparer), on its own port. The service definitions are
the generated modules tritonclient ships (``tritonclient.grpc.service_pb2[_grpc]``, the same
``inference`` package KServe and Triton serve), so ``tritonclient.grpc`` and KServe clients work
unchanged.

Tensors come as ``raw_input_contents`` (all inputs raw, as Triton's client sends them) or typed
``contents``; outputs always go back as ``raw_output_contents``. Refusals get the status code a
gRPC client expects, with the same message as over REST: INVALID_ARGUMENT (the request does not fit
the model), NOT_FOUND (another model or version), RESOURCE_EXHAUSTED (too large, server busy),
UNAVAILABLE (not ready yet); INTERNAL only for failures of the server itself. Requests are counted in
the same series as REST, labelled ``protocol="grpc"``, with the HTTP status REST gives the same
refusal as their ``code`` (so the 5xx error rate covers both).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Mapping, Sequence
from time import perf_counter
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from kondense.serving.app import ClientError, ModelServer
from kondense.serving.protocol import DecodedRequest, encode_binary_request, from_binary, to_binary
from kondense.serving.tensors import DATATYPES, InputRejectedError, TensorSpec, datatype_of
from kondense.serving.validation import (
    RequestError,
    RequestLimits,
    TensorHeader,
    check_finite,
    check_inputs,
    check_outputs,
)

log = logging.getLogger(__name__)

# The HTTP status of a refusal over REST -> its gRPC status code.
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    500: grpc.StatusCode.INTERNAL,
}

# The typed ``InferTensorContents`` field of each datatype (FP16 has none: raw only).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


class _Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, status: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        """The HTTP status REST answers the same refusal with (the metrics' ``code``)."""


def _client_error(exc: ClientError) -> _Refusal:
    # 503 is "busy" (admission, byte budget) on the inference path: RESOURCE_EXHAUSTED, retry later.
    code = grpc.StatusCode.RESOURCE_EXHAUSTED if exc.status == 503 else _CODES.get(exc.status)
    return _Refusal(code or grpc.StatusCode.INVALID_ARGUMENT, exc.status, str(exc))


def _invalid(message: str) -> _Refusal:
    return _Refusal(grpc.StatusCode.INVALID_ARGUMENT, 400, message)


def decode_infer_request(
    request: pb.ModelInferRequest,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    limits: RequestLimits,
    allow_non_finite: bool = False,
) -> DecodedRequest:
    """Check a ``ModelInferRequest`` against the model (``validation``, before any tensor data is
    converted) and turn it into numpy arrays; problems raise ``RequestError``."""
    if not request.inputs:
        raise RequestError("the request has no inputs")
    check_inputs([TensorHeader(t.name, t.datatype, list(t.shape)) for t in request.inputs], inputs, limits)
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise RequestError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; when raw "
            "contents are used, every input needs one, in the order of 'inputs'"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        where = f"input '{tensor.name}'"
        if raw:
            if tensor.HasField("contents") and tensor.contents.ListFields():
                raise RequestError(f"{where}: has both typed contents and raw_input_contents; give one")
            array = from_binary(raw[index], tensor.datatype, tensor.shape, where)
        else:
            array = _from_contents(tensor.contents, tensor.datatype, list(tensor.shape), where)
        if not allow_non_finite:
            check_finite(array, tensor.datatype, where)
        arrays[tensor.name] = array

    requested: list[str] | None = None
    if request.outputs:
        requested = [out.name for out in request.outputs]
        check_outputs(requested, outputs)
        for out in request.outputs:
            if "classification" in out.parameters:
                raise RequestError(f"output '{out.name}': the classification extension is not supported")
    return DecodedRequest(request.id or None, arrays, requested, frozenset())


def _from_contents(
    contents: pb.InferTensorContents, datatype: str, shape: list[int], where: str
) -> np.ndarray:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise RequestError(f"{where}: {datatype} has no typed contents field; send it in raw_input_contents")
    given = [descriptor.name for descriptor, _ in contents.ListFields()]
    if wrong := [name for name in given if name != field]:
        raise RequestError(
            f"{where}: contents.{wrong[0]} given for {datatype}; {datatype} goes in contents.{field}"
        )
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise RequestError(
            f"{where}: contents.{field} has {len(values)} values but shape {shape} needs {count}"
        )
    target = DATATYPES[datatype]
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    if target.kind in "iu" and target.itemsize < 4:  # INT8/16, UINT8/16 travel as 32-bit values
        wide = np.array(values, dtype=np.int64)
        info = np.iinfo(target)
        if count and (wide.min() < info.min or wide.max() > info.max):
            bad = wide.min() if wide.min() < info.min else wide.max()
            raise RequestError(f"{where}: value {bad} is out of range for {datatype}")
        return wide.astype(target).reshape(shape)
    return np.array(values, dtype=target).reshape(shape)


def encode_infer_response(
    model_name: str, model_version: str, request_id: str | None, outputs: Mapping[str, np.ndarray]
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id or "")
    for name, array in outputs.items():
        response.outputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        response.raw_output_contents.append(to_binary(array))
    return response


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The v2 gRPC service over one ``ModelServer``."""

    def __init__(self, server: ModelServer) -> None:
        self._server = server

    # --- health and metadata -------------------------------------------------------------------

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._server.ready)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelReadyResponse:
        if (problem := self._server.model_problem(request.name, request.version)) is not None:
            await context.abort(grpc.StatusCode.NOT_FOUND, problem)
        return pb.ModelReadyResponse(ready=self._server.ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="kondense", version=self._server.server_version, extensions=["binary_tensor_data"]
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelMetadataResponse:
        server = self._server
        if (problem := server.model_problem(request.name, request.version)) is not None:
            await context.abort(grpc.StatusCode.NOT_FOUND, problem)
        model = server.model
        if model is None or not server.ready:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"model '{server.settings.model_name}' is not ready yet"
            )
        assert model is not None

        def described(specs: Sequence[TensorSpec]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            return [
                pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=list(s.shape))
                for s in specs
            ]

        settings = server.settings
        return pb.ModelMetadataResponse(
            name=settings.model_name,
            versions=[settings.model_version],
            platform=settings.platform,
            inputs=described(model.inputs),
            outputs=described(model.outputs),
        )

    # --- inference -------------------------------------------------------------------------------

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        """Every answer, refusal or not, is counted in kondense_requests_total{protocol="grpc"}."""
        started = perf_counter()
        status = 200
        try:
            return await self._infer(request)
        except _Refusal as refusal:
            status = refusal.status
            await context.abort(refusal.code, str(refusal))
        except Exception:  # a bug must still be an answer, and be counted
            log.exception("gRPC inference request failed")
            status = 500
            await context.abort(
                grpc.StatusCode.INTERNAL,
                "internal server error while answering the request (see the server log)",
            )
        finally:
            self._server.metrics.observe_request(status, perf_counter() - started, "grpc")
        raise AssertionError("unreachable: context.abort raises")

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        server = self._server
        settings = server.settings
        if (problem := server.model_problem(request.model_name, request.model_version)) is not None:
            raise _Refusal(grpc.StatusCode.NOT_FOUND, 404, problem)
        model, runner = server.model, server.runner
        if model is None or runner is None:
            raise _Refusal(
                grpc.StatusCode.UNAVAILABLE, 503, f"model '{settings.model_name}' is not ready yet"
            )
        try:
            with server.admitted() as reservation:
                reservation.take(request.ByteSize())
                decoded = decode_infer_request(
                    request,
                    model.inputs,
                    model.outputs,
                    limits=server.limits,
                    allow_non_finite=settings.allow_non_finite,
                )
                if settings.inject_latency_s:
                    await asyncio.sleep(settings.inject_latency_s)
                if settings.inject_error_rate and random.random() < settings.inject_error_rate:
                    raise _Refusal(
                        grpc.StatusCode.INTERNAL,
                        500,
                        "injected error (--inject-error-rate, for tests and demos only)",
                    )
                outputs = server.answered(await runner.run(decoded.inputs, decoded.outputs))
        except ClientError as exc:
            raise _client_error(exc) from None
        except RequestError as exc:
            raise _invalid(str(exc)) from None
        except InputRejectedError as exc:
            raise _invalid(f"the model rejected the inputs: {exc}") from None
        for comparer in (server.shadow, server.mirror):
            if comparer is not None and comparer.sampled():
                # Replayed to the peer as a REST binary request: agreement counts gRPC traffic too.
                body, header_length = encode_binary_request(decoded.id, decoded.inputs, decoded.outputs)
                comparer.enqueue(body, header_length, outputs)
        return encode_infer_response(settings.model_name, settings.model_version, decoded.id, outputs)


_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE = _SERVICE.full_name


def implemented_handlers(servicer: InferenceServicer) -> dict[str, grpc.RpcMethodHandler]:
    """Handlers of the service's methods the servicer implements, and of no others.

    The generated ``add_GRPCInferenceServiceServicer_to_server`` registers all 20 of the service's
    methods (the 14 not implemented here answer UNIMPLEMENTED from the generated base class).
    grpc.aio keeps one pending call request per registered method and waits on all of them with
    ``asyncio.wait`` for every call it takes in: with 21 the bookkeeping cost more per call than our
    handler's own Python for a small model. The other methods still answer UNIMPLEMENTED, from
    grpc.aio itself (no handler)."""
    handlers = {}
    for method in _SERVICE.methods:
        if method.name not in type(servicer).__dict__:
            continue
        if method.client_streaming or method.server_streaming:
            raise TypeError(f"{method.name}: only unary methods are served")
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=getattr(pb, method.input_type.name).FromString,
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
    return handlers


HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def health_handler(server: ModelServer) -> grpc.GenericRpcHandler:
    """gRPC's standard health check (``grpc.health.v1.Health/Check``, as ``grpc_health_probe``,
    Kubernetes' ``grpc`` probes and gRPC load balancers call it; messages from
    ``grpcio-health-checking``) for the server as a whole (service ``""``) and the inference service:
    SERVING exactly while ``server.ready`` (``/v2/health/ready``'s answer), read at each call, so it
    cannot drift from it; other names NOT_FOUND.

    Check only, as Triton serves it. Watch answers UNIMPLEMENTED, which gRPC clients' health
    checking takes as "healthy, nothing to watch": an open Watch stream never ends on its own, so
    every watcher would hold the server's shutdown for its whole grace period (30 s by default).
    Through a generic handler, not a registered method: grpc.aio waits on one pending call request
    per registered method for every call it takes in (every ModelInfer would pay for it), and health
    checks come every few seconds."""
    answer = health_pb2.HealthCheckResponse

    async def check(
        request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        if request.service not in ("", SERVICE):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no health is reported for '{request.service}'; services: '' (the server), '{SERVICE}'",
            )
        return answer(status=answer.SERVING if server.ready else answer.NOT_SERVING)

    handler = grpc.unary_unary_rpc_method_handler(
        check,
        request_deserializer=health_pb2.HealthCheckRequest.FromString,
        response_serializer=answer.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(HEALTH_SERVICE, {"Check": handler})


class GrpcFrontEnd:
    """A ``grpc.aio`` server on the running (uvicorn's) event loop, started by the app's lifespan,
    with the standard health check (``health_handler``) beside the inference service."""

    def __init__(self, address: str, *, grace_s: float, shared_port: bool = False) -> None:
        self.address = address
        self._grace_s = grace_s
        self._shared_port = shared_port
        """One of several workers on the port (``SO_REUSEPORT``; the parent checked it was free)."""
        self._server: grpc.aio.Server | None = None

    async def start(self, server: ModelServer) -> None:
        limit = server.settings.max_body_bytes
        grpc_server = grpc.aio.server(
            options=[
                # Larger messages are refused by gRPC itself with RESOURCE_EXHAUSTED (--max-body-bytes).
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                # a port in use is an error, not a shared port; workers share theirs
                ("grpc.so_reuseport", 1 if self._shared_port else 0),
            ],
        )
        handlers = implemented_handlers(InferenceServicer(server))
        grpc_server.add_registered_method_handlers(SERVICE, handlers)
        grpc_server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers), health_handler(server))
        )
        try:
            grpc_server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise RuntimeError(f"the gRPC port {self.address} cannot be opened: {exc}") from None
        await grpc_server.start()
        self._server = grpc_server
        log.info("gRPC (Open Inference Protocol) listening on %s", self.address)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(self._grace_s)

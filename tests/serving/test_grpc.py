"""The Open Inference Protocol over gRPC: Triton's own gRPC client, unchanged, and raw stubs with
hostile messages, against real ``kondense serve --grpc-port`` processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from kondense.serving.app import ModelServer, ServerSettings
from kondense.serving.grpc_server import SERVICE, GrpcFrontEnd, InferenceServicer, implemented_handlers
from kondense.serving.model import OnnxModel

from .conftest import DATATYPE_FEED, Digits, Server, assert_datatypes_answer, free_port, running_server

MAX_BODY = 200_000
MAX_ELEMENTS = 100_000


@dataclass
class GrpcServer:
    http: Server
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(url=self.address)


@contextlib.contextmanager
def grpc_server(model_dir: Path, name: str, *args: str) -> Iterator[GrpcServer]:
    port = free_port()
    with running_server(model_dir, name, "--grpc-port", str(port), *args) as http:
        yield GrpcServer(http, port)


@pytest.fixture(scope="module")
def digits_grpc(digits: Digits) -> Iterator[GrpcServer]:
    limits = ["--max-body-bytes", str(MAX_BODY), "--max-elements", str(MAX_ELEMENTS)]
    with grpc_server(digits.directory, "digits", *limits) as server:
        yield server


@pytest.fixture(scope="module")
def stub(digits_grpc: GrpcServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    # The client may send more than the server takes: the server's limit is what is tested.
    channel = grpc.insecure_channel(
        digits_grpc.address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    )
    with channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def test_health_and_metadata(digits_grpc: GrpcServer) -> None:
    client = digits_grpc.client()
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    metadata = client.get_server_metadata()
    assert metadata.name == "kondense" and "binary_tensor_data" in metadata.extensions
    model = client.get_model_metadata("digits", as_json=True)
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert model["outputs"][0]["name"] == "logits" and model["platform"] == "onnxruntime_onnx"
    for call in (lambda: client.is_model_ready("resnet"), lambda: client.get_model_metadata("digits", "7")):
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == "StatusCode.NOT_FOUND"
    assert "model 'resnet' is not served here" in _rpc_error(lambda: client.is_model_ready("resnet"))


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_standard_grpc_health_check_answers_for_the_server_and_the_inference_service(
    digits_grpc: GrpcServer,
) -> None:
    """grpc.health.v1 Check, as grpc_health_probe and Kubernetes' grpc probes call it; no Watch (a
    stream that would hold the shutdown), which gRPC clients take as healthy."""
    with grpc.insecure_channel(digits_grpc.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == SERVING
        for call, code in (
            (
                lambda: health.Check(health_pb2.HealthCheckRequest(service="resnet")),
                grpc.StatusCode.NOT_FOUND,
            ),
            (lambda: next(health.Watch(health_pb2.HealthCheckRequest())), grpc.StatusCode.UNIMPLEMENTED),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == code


def test_grpc_health_is_not_serving_until_the_model_is_ready(digits: Digits) -> None:
    """The gRPC port is up while the model loads (held here on an event): Check says NOT_SERVING
    for both names until the model is ready, SERVING from then on."""
    loaded = threading.Event()

    def load() -> OnnxModel:
        assert loaded.wait(30)
        return OnnxModel(digits.directory / "model.onnx", threads=1)

    async def life() -> list[list[int]]:
        port = free_port()
        server = ModelServer(
            ServerSettings(model_name="digits", sha256="0" * 64),
            load,
            pytest.fail,
            [GrpcFrontEnd(f"127.0.0.1:{port}", grace_s=1)],
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def statuses() -> list[int]:
                return [
                    (await health.Check(health_pb2.HealthCheckRequest(service=service))).status
                    for service in ("", SERVICE)
                ]

            async with server.lifespan(None):  # type: ignore[arg-type]  # the app is not used
                seen = [await statuses()]
                loaded.set()
                for _ in range(300):
                    if server.ready:
                        break
                    await asyncio.sleep(0.1)
                seen.append(await statuses())
        return seen

    assert asyncio.run(life()) == [[NOT_SERVING, NOT_SERVING], [SERVING, SERVING]]


def test_only_the_implemented_methods_are_registered_and_the_others_are_unimplemented(
    digits_grpc: GrpcServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """grpc.aio waits on one pending call request per registered method for every call it takes in:
    the server registers the six methods it serves; the rest of the service answers UNIMPLEMENTED."""
    servicer = InferenceServicer.__new__(InferenceServicer)  # the handlers only bind its methods
    assert sorted(implemented_handlers(servicer)) == [
        "ModelInfer", "ModelMetadata", "ModelReady", "ServerLive", "ServerMetadata", "ServerReady"
    ]  # fmt: skip
    client = digits_grpc.client()
    for call in (
        lambda: client.get_inference_statistics("digits"),
        lambda: client.get_model_config("digits"),
        lambda: client.get_model_repository_index(),
    ):
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == "StatusCode.UNIMPLEMENTED"
    with pytest.raises(grpc.RpcError) as raw:
        stub.ModelStatistics(pb.ModelStatisticsRequest(name="digits"))
    assert raw.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert stub.ServerLive(pb.ServerLiveRequest()).live  # the registered ones still answer


_SETTINGS = """
import sys
if sys.argv[1] == "late":
    import grpc
from kondense.serving.server import grpc_core_settings
import os
print(grpc_core_settings(), os.environ.get("GRPC_EXPERIMENTS"))
"""


@pytest.mark.parametrize(
    ("env", "when", "expected"),
    [
        (None, "early", "-event_engine_listener -event_engine_listener"),
        ("event_engine_listener", "early", "event_engine_listener event_engine_listener"),
        (None, "late", "None None"),
    ],
)
def test_grpc_core_defaults_apply_before_grpc_is_imported_and_yield_to_the_user(
    env: str | None, when: str, expected: str
) -> None:
    """The server's gRPC core default (the pre-EventEngine listener) is set only while grpc is not
    imported yet (gRPC reads GRPC_EXPERIMENTS once, on import) and never over the user's own choice."""
    environ = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    if env is not None:
        environ["GRPC_EXPERIMENTS"] = env
    out = subprocess.run(
        [sys.executable, "-c", _SETTINGS, when], env=environ, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected


def test_the_server_logs_the_grpc_core_experiments_in_force(digits: Digits) -> None:
    with grpc_server(digits.directory, "digits") as server:
        assert server.client().is_server_ready()
        _, log = server.http.stop()
    assert "gRPC core experiments: -event_engine_listener (GRPC_EXPERIMENTS)" in log


def _rpc_error(call: Callable[[], object]) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value.message())


@pytest.mark.parametrize("request_outputs", [True, False])
def test_infer_equals_in_process_onnxruntime(
    digits_grpc: GrpcServer, digits: Digits, request_outputs: bool
) -> None:
    batch = digits.inputs[:16]
    tensor = triton.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    outputs = [triton.InferRequestedOutput("logits")] if request_outputs else None
    result = digits_grpc.client().infer("digits", [tensor], outputs=outputs, request_id="abc")
    assert result.get_response().id == "abc"
    np.testing.assert_array_equal(result.as_numpy("logits"), digits.reference(batch))


def test_typed_contents_equal_raw_contents(stub: pb_grpc.GRPCInferenceServiceStub, digits: Digits) -> None:
    batch = digits.inputs[:3]
    request = pb.ModelInferRequest(model_name="digits", id="typed")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(batch.shape))
    tensor.contents.fp32_contents.extend(batch.reshape(-1).tolist())
    response = stub.ModelInfer(request)
    assert response.id == "typed" and response.outputs[0].name == "logits"
    assert list(response.outputs[0].shape) == [3, 10] and response.outputs[0].datatype == "FP32"
    logits = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(3, 10)
    np.testing.assert_array_equal(logits, digits.reference(batch))


def test_every_datatype_through_raw_contents(datatypes_dir: Path) -> None:
    inputs = []
    for name, (datatype, array) in DATATYPE_FEED.items():
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    with grpc_server(datatypes_dir, "datatypes") as server:
        result = server.client().infer("datatypes", inputs)
    assert_datatypes_answer(datatypes_dir, result.as_numpy)


def _request(
    shape: list[int], datatype: str = "FP32", raw: list[bytes] | None = None, model: str = "digits"
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype=datatype, shape=shape)
    if raw is not None:
        request.raw_input_contents.extend(raw)
    return request


def _typed(values: list[float], shape: list[int], field: str = "fp32_contents") -> pb.ModelInferRequest:
    request = _request(shape)
    getattr(request.inputs[0].contents, field).extend(values)
    return request


ZEROS = np.zeros((1, 64), np.float32).tobytes()

HOSTILE = {
    "huge shape": (
        _request([2**40, 64], raw=[ZEROS]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "dimension 0 of shape [1099511627776, 64] is over the limit",
    ),
    "too many elements": (
        _request([2_000, 64], raw=[ZEROS]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "over the limit of 100000 per request (--max-elements)",
    ),
    "negative dimension": (
        _request([-1, 64], raw=[ZEROS]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "shape [-1, 64] has a negative dimension",
    ),
    "wrong rank": (
        _request([64], raw=[ZEROS]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "does not match the model's",
    ),
    "wrong dtype": (
        _request([1, 64], "INT32", raw=[ZEROS]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "datatype INT32 does not match the model's FP32",
    ),
    "unknown dtype": (
        _request([1, 64], "FLOAT128", raw=[ZEROS]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown datatype 'FLOAT128'",
    ),
    "short raw contents": (
        _request([1, 64], raw=[ZEROS[:-4]]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "binary data has 252 bytes but shape [1, 64] of FP32 needs 256",
    ),
    "too many raw contents": (
        _request([1, 64], raw=[ZEROS, ZEROS]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "raw_input_contents has 2 entries for 1 inputs",
    ),
    "no data": (_request([1, 64]), grpc.StatusCode.INVALID_ARGUMENT, "contents.fp32_contents has 0 values"),
    "typed contents of the wrong type": (
        _typed([1] * 64, [1, 64], "int64_contents"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "contents.int64_contents given for FP32",
    ),
    "typed contents, wrong count": (
        _typed([0.5] * 63, [1, 64]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "contents.fp32_contents has 63 values but shape [1, 64] needs 64",
    ),
    "non-finite value": (
        _typed([float("nan")] * 64, [1, 64]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "value at flat index 0 is nan",
    ),
    "no inputs": (pb.ModelInferRequest(model_name="digits"), grpc.StatusCode.INVALID_ARGUMENT, "no inputs"),
    "unknown model": (
        _request([1, 64], raw=[ZEROS], model="resnet"),
        grpc.StatusCode.NOT_FOUND,
        "model 'resnet' is not served here",
    ),
    "message over the size limit": (
        _request([1, 64], raw=[b"\0" * (MAX_BODY + 1)]),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_requests_get_client_error_codes(
    stub: pb_grpc.GRPCInferenceServiceStub, digits_grpc: GrpcServer, case: str
) -> None:
    request, code, message = HOSTILE[case]
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=10)
    error = caught.value
    assert error.code() == code, error.details()
    assert message in error.details()
    # the server is still healthy and answers the next request
    assert digits_grpc.client().is_server_ready()


def test_unknown_output_and_wrong_version(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = _request([1, 64], raw=[ZEROS])
    request.outputs.add(name="probabilities")
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requested output 'probabilities' is not an output" in caught.value.details()
    request = _request([1, 64], raw=[ZEROS])
    request.model_version = "7"
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def _counter(metrics: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    match = re.search(rf"^{name}{{{re.escape(wanted)}}} (\S+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_grpc_requests_by_protocol(
    digits_grpc: GrpcServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    labels = {"model": "digits", "variant": "stable", "protocol": "grpc"}
    before = digits_grpc.http.metrics()
    for _ in range(3):
        stub.ModelInfer(_request([1, 64], raw=[ZEROS]))
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(_request([1, 63], raw=[ZEROS]))
    after = digits_grpc.http.metrics()

    def delta(name: str, **extra: str) -> float:
        return _counter(after, name, **labels, **extra) - _counter(before, name, **labels, **extra)

    assert (delta("kondense_requests_total", code="200"), delta("kondense_requests_total", code="400")) == (
        3,
        1,
    )
    assert delta("kondense_request_duration_seconds_count") == 4
    rest = {**labels, "protocol": "rest", "code": "200"}
    assert _counter(after, "kondense_requests_total", **rest) == _counter(
        before, "kondense_requests_total", **rest
    )


def test_busy_server_answers_resource_exhausted(digits: Digits) -> None:
    # One request admitted at a time, each held for 3 s: of four sent at once, three are refused.
    args = ["--max-concurrent-requests", "1", "--inject-latency-ms", "3000"]
    with (
        grpc_server(digits.directory, "digits", *args) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = [stub.ModelInfer.future(_request([1, 64], raw=[ZEROS]), timeout=30) for _ in range(4)]
        refused = [call.exception() for call in calls if call.exception() is not None]
        answered = [call.result() for call in calls if call.exception() is None]
        metrics = server.http.metrics()
    assert len(answered) == 1 and len(refused) == 3
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "inference requests are in flight (--max-concurrent-requests)" in error.details()
    labels = {"model": "digits", "variant": "stable", "protocol": "grpc"}
    assert _counter(metrics, "kondense_requests_total", **labels, code="503") == 3


def test_grpc_requests_are_shadowed_to_the_rest_stable(digits_server: Server, digits: Digits) -> None:
    args = ["--variant", "canary", "--shadow-of", digits_server.url, "--task", "classification"]
    with grpc_server(digits.directory, "digits", *args) as canary:
        client = canary.client()
        for start in range(0, 40, 4):
            batch = digits.inputs[start : start + 4]
            tensor = triton.InferInput("input", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch)
            client.infer("digits", [tensor])
        deadline = time.monotonic() + 30
        while True:
            text = canary.http.metrics()
            counts = {
                result: _counter(
                    text, "kondense_shadow_comparisons_total", model="digits", variant="canary", result=result
                )
                for result in ("agree", "disagree", "error")
            }
            if sum(counts.values()) >= 40 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert counts == {"agree": 40, "disagree": 0, "error": 0}

"""Hostile requests against a real `kondense serve` process (issue 11, point 9).

Whatever a client sends — shapes, datatypes, sizes, encodings, gzip bombs, floods of concurrent
requests — the server answers with a 4xx (or a 503 with Retry-After when busy) carrying a message
that says what was wrong, never a 500 or an exception's repr; every answer is counted in
``kondense_requests_total`` (the canary's error rate must see them); the connection stays usable;
the server's memory (its process and its decode worker) stays bounded; and ``/v2/health/live``
keeps answering while a large body is being decoded.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from kondense.api.artifacts import MANIFEST_FILE, MODEL_FILE, ArtifactRef, Manifest, sha256_file
from kondense.api.techniques import Task
from kondense.serving.tensors import DATATYPES
from kondense_testing.procfs import tree_rss_bytes
from kondense_testing.servers import ServerProcess, start_server

pytestmark = pytest.mark.timeout(600)

MiB = 1024 * 1024
NAME = "hostile"
LIMITS = [
    "--max-body-bytes", str(4 * MiB),
    "--max-json-bytes", str(2 * MiB),
    "--max-elements", str(1024 * 1024),
    "--max-inflight-bytes", str(16 * MiB),
    "--max-concurrent-requests", "8",
    "--decode-offload-bytes", str(256 * 1024),
    "--threads", "1",
]  # fmt: skip
RSS_BOUND = 900 * MiB
"""Generous: the server with ONNX Runtime plus its decode worker use ~250 MB; without limits one
60 MB JSON request took 1.3 GB."""
REPR = re.compile(r"\b\w+(Error|Exception)\(|Traceback|<\w[\w.]* object at 0x")


def two_input_model(directory: Path) -> Path:
    """x: FP32 [batch, width] -> x + x; text: STRING [batch] -> lower case (dynamic dimensions: a
    shape like [10**30, 0] passes the model's shape check)."""
    info = helper.make_tensor_value_info
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "x"], ["y"]),
            helper.make_node("StringNormalizer", ["text"], ["lower"], case_change_action="LOWER", locale="C"),
        ],
        "two",
        [info("x", TensorProto.FLOAT, ["batch", "width"]), info("text", TensorProto.STRING, ["batch"])],
        [info("y", TensorProto.FLOAT, ["batch", "width"]), info("lower", TensorProto.STRING, ["batch"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    directory.mkdir(parents=True)
    onnx.save(model, directory / MODEL_FILE)
    ref = ArtifactRef(
        sha256=sha256_file(directory / MODEL_FILE), sizeBytes=(directory / MODEL_FILE).stat().st_size
    )
    manifest = Manifest(name=NAME, task=Task.REGRESSION, base=ref, artifact=ref)
    (directory / MANIFEST_FILE).write_text(manifest.model_dump_json())
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return two_input_model(tmp_path_factory.mktemp("hostile") / "model")


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[ServerProcess]:
    process = start_server(model_dir, NAME, *LIMITS)
    try:
        yield process
    finally:
        process.stop()


def infer_url(server: ServerProcess) -> str:
    return f"{server.url}/v2/models/{NAME}/infer"


def requests_counted(server: ServerProcess) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(
        float(m.group(1)) for m in re.finditer(r"^kondense_requests_total\{[^}]*\} (\S+)$", text, re.M)
    )


def good_body(rows: int = 1) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": [0.5] * 4 * rows},
            {"name": "text", "shape": [rows], "datatype": "BYTES", "data": ["AbC"] * rows},
        ]
    }


def assert_clear_answer(response: httpx.Response) -> None:
    """200, or a client error / busy answer with a message that is not a repr."""
    assert response.status_code in (200, 400, 404, 413, 415, 503), (response.status_code, response.text)
    if response.status_code == 200:
        return
    message = response.json()["error"]
    assert isinstance(message, str) and len(message) > 10
    assert not REPR.search(message), message
    if response.status_code == 503:
        assert response.headers["retry-after"] == "1"


# --- hypothesis: arbitrary requests ----------------------------------------------------------------

dims = st.one_of(
    st.integers(-3, 6),
    st.sampled_from([0, 1, 4, 10**6, 2**31, 2**63, 2**64, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
)
scalars = st.one_of(
    st.floats(allow_nan=False),
    st.integers(-(2**70), 2**70),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)
data = st.recursive(st.lists(scalars, max_size=8), lambda inner: st.lists(inner, max_size=4), max_leaves=40)
tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["x", "text", "y", ""]),
        "shape": st.one_of(st.lists(dims, max_size=4), st.text(max_size=3), st.integers()),
        "datatype": st.sampled_from([*DATATYPES, "BF16", "fp32", ""]),
    },
    optional={
        "data": st.one_of(data, st.text(max_size=4), st.integers()),
        "parameters": st.one_of(
            st.fixed_dictionaries({"binary_data_size": st.one_of(st.integers(-2, 64), st.text(max_size=2))}),
            st.dictionaries(st.text(max_size=3), scalars, max_size=2),
        ),
    },
)
bodies = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(tensors, max_size=3), scalars)},
    optional={
        "outputs": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["y", "lower", "x", "nope"])},
                optional={
                    "parameters": st.dictionaries(st.sampled_from(["binary_data", "classification"]), scalars)
                },
            ),
            max_size=3,
        ),
        "parameters": st.dictionaries(st.sampled_from(["binary_data_output", "other"]), scalars, max_size=2),
        "id": st.one_of(st.text(max_size=4), st.integers()),
    },
)
encodings = st.sampled_from(["identity", "gzip", "deflate", "br", "gzip-garbage", "gzip-truncated"])


def encode(payload: bytes, encoding: str) -> tuple[bytes, dict[str, str]]:
    if encoding == "identity":
        return payload, {}
    if encoding == "gzip":
        return gzip.compress(payload), {"content-encoding": "gzip"}
    if encoding == "deflate":
        return zlib.compress(payload), {"content-encoding": "deflate"}
    if encoding == "gzip-garbage":
        return payload, {"content-encoding": "gzip"}
    if encoding == "gzip-truncated":
        return gzip.compress(payload)[:-9], {"content-encoding": "gzip"}
    return payload, {"content-encoding": encoding}


def send_hostile(
    client: httpx.Client, url: str, body: Any, encoding: str, blob: bytes, header_length: Any
) -> None:
    text = json.dumps(body).encode()  # allow_nan: NaN/Infinity tokens are part of the hostility
    headers: dict[str, str] = {"content-type": "application/json"}
    if header_length is not None:
        headers["inference-header-content-length"] = str(
            len(text) if header_length == "json" else header_length
        )
        text += blob
    content, extra = encode(text, encoding)
    response = client.post(url, content=content, headers={**headers, **extra})
    assert_clear_answer(response)
    assert response.status_code != 503  # one request at a time never finds the server busy


ZERO_ROWS_OF_A_HUGE_BATCH = {
    "inputs": [
        {"name": "x", "shape": [10**30, 0], "datatype": "FP32", "data": []},
        {"name": "text", "shape": [0], "datatype": "BYTES", "data": []},
    ]
}


def test_hostile_requests_get_a_clear_client_error_and_are_all_counted(server: ServerProcess) -> None:
    before = requests_counted(server)
    sent = 0
    # One keep-alive connection for all of them: a request that breaks it fails the next one.
    with httpx.Client(timeout=30) as client:

        @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(
            body=bodies,
            encoding=encodings,
            blob=st.binary(max_size=64),
            header_length=st.one_of(st.none(), st.integers(-5, 4000), st.just("json")),
        )
        @example(body=ZERO_ROWS_OF_A_HUGE_BATCH, encoding="identity", blob=b"", header_length=None)
        @example(body=good_body(2), encoding="gzip", blob=b"", header_length="json")
        def one_request(body: Any, encoding: str, blob: bytes, header_length: Any) -> None:
            nonlocal sent
            sent += 1
            send_hostile(client, infer_url(server), body, encoding, blob, header_length)

        one_request()
        assert client.post(infer_url(server), json=good_body()).status_code == 200
        sent += 1
    assert requests_counted(server) - before == sent
    assert tree_rss_bytes(server.proc.pid) < RSS_BOUND


# --- named hostile requests ------------------------------------------------------------------------


def test_a_huge_dimension_with_a_zero_is_a_400_and_the_connection_survives(server: ServerProcess) -> None:
    """Before: a 500 with the exception's repr, the next request on the connection reset, not counted."""
    before = requests_counted(server)
    with httpx.Client(timeout=30) as client:
        bad = client.post(infer_url(server), content=json.dumps(ZERO_ROWS_OF_A_HUGE_BATCH))
        assert bad.status_code == 400
        assert "over the limit of 1048576 elements per request (--max-elements)" in bad.json()["error"]
        good = client.post(infer_url(server), json=good_body(3))  # same connection
        assert good.status_code == 200
        assert good.json()["outputs"][1]["data"] == ["abc"] * 3
    assert requests_counted(server) - before == 2


def test_too_many_elements_is_a_400_naming_the_limit(server: ServerProcess) -> None:
    """Counted from the shapes, before any data is converted."""
    body = good_body()
    body["inputs"][0] = {"name": "x", "shape": [300_000, 4], "datatype": "FP32", "data": [0.0]}
    response = httpx.post(infer_url(server), json=body)
    assert response.status_code == 400
    message = response.json()["error"]
    assert "the inputs hold 1200001 elements (x: 1200000, text: 1)" in message and "--max-elements" in message


def gzip_bomb(inflated: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(MiB)
    return b"".join([*(compressor.compress(block) for _ in range(inflated // MiB)), compressor.flush()])


def test_a_gzip_bomb_is_a_413_and_memory_stays_bounded(server: ServerProcess) -> None:
    bomb = gzip_bomb(512 * MiB)
    assert len(bomb) < MiB
    before = requests_counted(server)
    response = httpx.post(infer_url(server), content=bomb, headers={"content-encoding": "gzip"}, timeout=60)
    assert response.status_code == 413
    assert "decompressed request body is over the limit" in response.json()["error"]
    assert requests_counted(server) - before == 1
    assert tree_rss_bytes(server.proc.pid) < RSS_BOUND


def test_oversized_json_is_refused_before_it_is_parsed(server: ServerProcess) -> None:
    rows = 120_000  # ~3.4 MB of JSON: under the body limit, over the JSON limit
    body = json.dumps(good_body(rows)).encode()
    assert 2 * MiB < len(body) < 4 * MiB
    response = httpx.post(infer_url(server), content=body, timeout=60)
    assert response.status_code == 413
    assert "--max-json-bytes" in response.json()["error"] and "binary data" in response.json()["error"]
    huge = httpx.post(infer_url(server), content=b" " * (60 * MiB), timeout=60)
    assert huge.status_code == 413 and "--max-body-bytes" in huge.json()["error"]
    assert tree_rss_bytes(server.proc.pid) < RSS_BOUND


def test_a_large_json_body_decoded_in_the_worker_gives_the_right_answer(server: ServerProcess) -> None:
    rows = 15_000  # ~1.4 MB of JSON: over --decode-offload-bytes, decoded in the worker process
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    body = good_body(rows)
    body["inputs"][0]["data"] = x.reshape(-1).tolist()
    response = httpx.post(infer_url(server), json=body, timeout=60)
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(
        np.array(response.json()["outputs"][0]["data"], np.float32), (x + x).reshape(-1)
    )
    bad = good_body(rows)
    bad["inputs"][0]["data"][-1] = "oops"
    response = httpx.post(infer_url(server), json=bad, timeout=60)
    assert response.status_code == 400 and "data must be numbers for FP32" in response.json()["error"]


def test_a_flood_gets_503_with_retry_after_and_every_answer_is_counted(model_dir: Path) -> None:
    flood = start_server(
        model_dir, NAME, *LIMITS, "--max-concurrent-requests", "3", "--inject-latency-ms", "400"
    )
    try:
        before = requests_counted(flood)
        with ThreadPoolExecutor(24) as pool:
            answers = list(
                pool.map(lambda _: httpx.post(infer_url(flood), json=good_body(), timeout=60), range(24))
            )
        codes = sorted(answer.status_code for answer in answers)
        for answer in answers:
            assert_clear_answer(answer)
        assert set(codes) == {200, 503}, codes
        busy = next(answer for answer in answers if answer.status_code == 503)
        assert "--max-concurrent-requests" in busy.json()["error"]
        assert requests_counted(flood) - before == 24
        assert httpx.get(f"{flood.url}/v2/health/live", timeout=5).status_code == 200
    finally:
        flood.stop()


def test_health_answers_while_a_large_body_is_decoded(model_dir: Path) -> None:
    """Before: JSON was parsed on the event loop and a 60 MB body left /v2/health/live unanswered
    for 6 s. Now the parse runs in the decode worker: probes are answered throughout."""
    big = start_server(
        model_dir, NAME, "--max-body-bytes", str(64 * MiB), "--max-json-bytes", str(64 * MiB),
        "--max-inflight-bytes", str(128 * MiB), "--max-elements", str(8 * MiB), "--threads", "1",
    )  # fmt: skip
    try:
        rows = 500_000  # 2 M floats + 0.5 M strings: ~14 MB of JSON, a second or more to parse
        body = json.dumps(good_body(rows)).encode()
        request = (
            f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode() + body
        answered: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    if client.get(f"{big.url}/v2/health/live").status_code == 200:
                        answered.append(time.monotonic())
                    time.sleep(0.02)

        with socket.create_connection(("127.0.0.1", big.port), timeout=120) as sock:
            sock.sendall(request)  # returns once the server has read all but the socket buffers
            sent_at = time.monotonic()
            prober = threading.Thread(target=probe)
            prober.start()
            reply = b""
            while b"\r\n\r\n" not in reply:
                reply += sock.recv(65536)
            replied_at = time.monotonic()
            stop.set()
            prober.join()
        assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
        during = [t for t in answered if sent_at < t < replied_at]
        # Counts, not durations: the loop answered probe after probe while the body was decoded.
        assert len(during) >= 5, (len(during), replied_at - sent_at)
    finally:
        big.stop()

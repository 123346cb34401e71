"""One send per response: the coalescing transport under uvicorn's protocol, alone and in a real server."""

from __future__ import annotations

import asyncio
import json
import socket

import numpy as np

from kondense.serving.http_protocol import CoalescingTransport

from .conftest import Digits, Server


class Recorder(asyncio.Transport):
    """A transport that keeps what is written (each entry: one call that would be one send)."""

    def __init__(self) -> None:
        super().__init__()
        self.sends: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sends.append(bytes(data))

    def writelines(self, list_of_data: object) -> None:
        self.sends.append(b"".join(list_of_data))  # type: ignore[arg-type]

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 8080) if name == "peername" else default


HEADER = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def test_a_header_block_leaves_with_the_body_after_it() -> None:
    async def scenario() -> list[list[bytes]]:
        loop = asyncio.get_running_loop()
        seen = []
        for after in (b"{}", None, "close"):
            recorder = Recorder()
            transport = CoalescingTransport(recorder, loop)
            transport.write(HEADER)
            assert recorder.sends == []  # held
            if after == "close":
                transport.close()
            elif isinstance(after, bytes):
                transport.write(after)
            await asyncio.sleep(0)  # the next loop step: a lone header block goes out
            await asyncio.sleep(0)
            assert transport.get_extra_info("peername") == ("127.0.0.1", 8080)  # delegated
            seen.append(recorder.sends)
        return seen

    body_after, lone, closed = asyncio.run(scenario())
    assert body_after == [HEADER + b"{}"]  # one send
    assert lone == [HEADER]
    assert closed == [HEADER]  # flushed before the close


def test_other_writes_pass_straight_through() -> None:
    async def scenario() -> list[bytes]:
        recorder = Recorder()
        transport = CoalescingTransport(recorder, asyncio.get_running_loop())
        transport.write(b"HTTP/1.1 is just text in a chunk")
        transport.write(b"more")
        return recorder.sends

    assert asyncio.run(scenario()) == [b"HTTP/1.1 is just text in a chunk", b"more"]


def _read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


def test_real_server_answers_keep_alive_requests_and_100_continue(
    digits_server: Server, digits: Digits
) -> None:
    row = digits.inputs[:1]
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row.ravel().tolist()}]}
    ).encode()
    request = (
        f"POST /v2/models/digits/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
    ).encode()
    expected = digits.reference(row)[0]
    with socket.create_connection(("127.0.0.1", digits_server.port), timeout=10) as sock:
        for _ in range(3):  # keep-alive: one response after the other on one connection
            sock.sendall(request + b"\r\n" + body)
            head, answer = _read_response(sock)
            assert head.startswith(b"HTTP/1.1 200")
            logits = np.array(json.loads(answer)["outputs"][0]["data"], dtype=np.float32)
            np.testing.assert_allclose(logits, expected, rtol=1e-6)
        # a lone header block (nothing follows it in the same step) still goes out: 100 Continue
        sock.sendall(request + b"expect: 100-continue\r\n\r\n")
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        head, _ = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200")

"""A decode worker process (see ``decoding``): frames in on stdin, frames out on stdout, until EOF."""

from __future__ import annotations

import pickle
import signal
import sys
from typing import BinaryIO

from kondense.serving.decoding import FRAME, READY
from kondense.serving.protocol import decode_request
from kondense.serving.validation import RequestError


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames may reach the server's pipe
    sink.write(READY)
    sink.flush()
    while (header := _read_exactly(source, FRAME.size)) is not None:
        (size,) = FRAME.unpack(header)
        payload = _read_exactly(source, size)
        if payload is None:
            break
        body, header_length, inputs, outputs, allow_non_finite, limits = pickle.loads(payload)
        try:
            result: tuple[str, object] = (
                "ok",
                decode_request(
                    body, header_length, inputs, outputs, allow_non_finite=allow_non_finite, limits=limits
                ),
            )
        except RequestError as exc:
            result = ("request-error", str(exc))
        except Exception as exc:  # reported to the server, which logs it and answers 500
            result = ("failure", f"{type(exc).__name__}: {exc}")
        out = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        del body, payload
        sink.write(FRAME.pack(len(out)))
        sink.write(out)
        sink.flush()


if __name__ == "__main__":
    main()

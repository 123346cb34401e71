"""uvicorn's httptools HTTP/1.1 protocol with each response leaving in one send.

uvicorn writes a response's status line and headers (ASGI ``http.response.start``) and its body
(``http.response.body``) to the transport separately: two send system calls, two TCP segments and,
for a client waiting for the answer, two wake-ups per response. For a model that answers in
microseconds that is a good part of the request. ``CoalescingHttpToolsProtocol`` (passed to uvicorn's
public ``http`` option) gives uvicorn's protocol a transport that holds a header block until the write
that follows it and sends both together; a header block with nothing after it in the same event-loop
step (HEAD, 204, ``100 Continue``, a body still being produced) goes out on the loop's next step.
Everything else is uvicorn's own code, unchanged: the wrapper sits at asyncio's public seam
(``connection_made`` receives the transport), nothing of uvicorn is patched. uvicorn writing the
header block and a complete body with one ``writelines`` (or buffering ``http.response.start`` until
the first body message, as its h11 path already builds the bytes) would make this module unnecessary.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEADER_START = b"HTTP/"
_HEADER_END = b"\r\n\r\n"


class CoalescingTransport:
    """A transport wrapper: a written header block waits for the next write (or the next loop step)."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines([held, data])  # uvloop: one writev
            return
        if data[:5] == _HEADER_START and data[-4:] == _HEADER_END:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through a ``CoalescingTransport``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

"""A real HTTP receiver on loopback for webhook and notification tests: it records every POST (path
and JSON body) and answers by path."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    def __init__(
        self,
        port: int = 0,
        answers: Mapping[str, tuple[int, bytes]] | None = None,
        default: tuple[int, bytes] = (200, b""),
        delays: Mapping[str, float] | None = None,
    ) -> None:
        """``answers``: (status, body) by path, else ``default``; ``delays``: seconds to wait first."""
        self.received: list[tuple[str, dict[str, Any]]] = []
        receiver, answer, delay = self, dict(answers or {}), dict(delays or {})

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                receiver.received.append((self.path, json.loads(self.rfile.read(length))))
                if self.path in delay:
                    time.sleep(delay[self.path])
                code, text = answer.get(self.path, default)
                self.send_response(code)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def receiving(**kwargs: Any) -> Iterator[Receiver]:
    r = Receiver(**kwargs)
    try:
        yield r
    finally:
        r.close()

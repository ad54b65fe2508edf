"""A real webhook receiver for the notification tests: the standard library's HTTP server on loopback, in a thread.

It records every POST (path, headers, JSON body) and answers each with the next status of ``statuses`` (the last
one repeats), so a test can make a receiver fail first and take the retry.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.peers import LOOPBACK, wait_until


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    raw: bytes
    status: int  # what the receiver answered


class WebhookReceiver:
    """``with WebhookReceiver([500, 200]) as hook: ... hook.url ... hook.wait_for(2)``."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [200])
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    status = receiver.statuses[min(len(receiver.received), len(receiver.statuses) - 1)]
                    receiver.received.append(
                        Received(self.path, dict(self.headers.items()), json.loads(raw), raw, status)
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._server.server_address[1]}/hook/secret-path"

    def posts(self, event: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.received if event is None or r.body.get("event") == event]

    def wait_for(self, count: int, event: str | None = None, timeout: float = 180) -> list[Received]:
        """The POSTs (of ``event``) once there are at least ``count`` of them, or whatever came by ``timeout``."""
        wait_until(lambda: len(self.posts(event)) >= count, timeout=timeout, interval=0.05)
        return self.posts(event)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

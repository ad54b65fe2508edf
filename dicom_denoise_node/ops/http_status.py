"""The node's HTTP face for monitoring: /healthz, /metrics (Prometheus text), /series and /associations (JSON).

Read-only and unauthenticated, so it binds to loopback unless ``[http] host`` says otherwise. The standard
library's threading server is enough for a scraper and a load balancer probe; it never touches DICOM traffic.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from dicom_denoise_node.ops.health import Health

log = logging.getLogger(__name__)


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class StatusServer:
    """Serves the monitoring endpoints from a daemon thread until stop()."""

    def __init__(
        self,
        host: str,
        port: int,
        health: Callable[[], Health],
        metrics: Callable[[], bytes],
        series: Callable[[], list[dict[str, Any]]],
        associations: Callable[[], list[dict[str, Any]]],
    ) -> None:
        routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/healthz": lambda: self._health(health),
            "/metrics": lambda: (HTTPStatus.OK, CONTENT_TYPE_LATEST, metrics()),
            "/series": lambda: (HTTPStatus.OK, "application/json", self._json(series())),
            "/associations": lambda: (HTTPStatus.OK, "application/json", self._json(associations())),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                route = routes.get(self.path.split("?", 1)[0])
                if route is None:
                    status, kind, body = HTTPStatus.NOT_FOUND, "text/plain", b"not found: " + ", ".join(routes).encode()
                else:
                    try:
                        status, kind, body = route()
                    except Exception as exc:
                        log.exception("HTTP %s failed", self.path)
                        status, kind, body = HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", str(exc).encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("HTTP %s", format % args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-status", daemon=True)

    @staticmethod
    def _json(value: object) -> bytes:
        return json.dumps(value, default=_json_default, indent=1).encode()

    def _health(self, health: Callable[[], Health]) -> tuple[int, str, bytes]:
        report = health()
        status = HTTPStatus.OK if report.ok else HTTPStatus.SERVICE_UNAVAILABLE
        return status, "application/json", self._json(report.as_dict())

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        log.info("HTTP status on http://%s:%d (/healthz /metrics /series /associations)", *self.address)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

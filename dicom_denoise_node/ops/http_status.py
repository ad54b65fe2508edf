"""The node's HTTP face: the status page for admins (/), /healthz, /metrics (Prometheus text), /series and
/associations (JSON). Read-only; it never touches DICOM traffic.

A Bottle app (one module, no dependencies) served by the standard library's WSGI server, one thread per request:
enough for an admin's browser, a scraper and a load balancer probe. It binds to loopback unless ``[http] host``
says otherwise, and then the config demands a token or basic auth (http_auth.py), checked before any route.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import bottle
from prometheus_client import CONTENT_TYPE_LATEST

from dicom_denoise_node.config import HttpSettings
from dicom_denoise_node.ops.health import Health
from dicom_denoise_node.ops.http_auth import HttpAuth

log = logging.getLogger(__name__)

ROUTES = ("/", "/healthz", "/metrics", "/series", "/associations")
PAGE_HEADERS = {
    # The page runs no script and loads nothing: a value that slipped past escaping could not run either.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _json(value: object) -> bytes:
    return json.dumps(value, default=_json_default, indent=1).encode()


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("HTTP %s %s", self.address_string(), format % args)


def build_app(
    auth: HttpAuth,
    health: Callable[[], Health],
    metrics: Callable[[], bytes],
    series: Callable[[], list[dict[str, Any]]],
    associations: Callable[[int], list[dict[str, Any]]],
    page: Callable[[], str],
) -> bottle.Bottle:
    """The WSGI app: every route answers read-only; credentials are checked before routing."""
    app = bottle.Bottle(catchall=True)

    @app.hook("before_request")
    def _authenticate() -> None:
        path = bottle.request.path
        if not auth.allows(path, bottle.request.get_header("Authorization")):
            log.info("HTTP %s from %s refused: no valid credentials", path, bottle.request.remote_addr)
            raise bottle.HTTPResponse(
                "credentials required ([http] token or basic_auth)\n",
                status=HTTPStatus.UNAUTHORIZED,
                headers={"WWW-Authenticate": auth.challenge(), "Content-Type": "text/plain"},
            )

    @app.get("/")
    def _page() -> str:
        for name, value in PAGE_HEADERS.items():
            bottle.response.set_header(name, value)
        bottle.response.content_type = "text/html; charset=utf-8"
        return page()

    @app.get("/healthz")
    def _health() -> bytes:
        report = health()
        bottle.response.status = HTTPStatus.OK if report.ok else HTTPStatus.SERVICE_UNAVAILABLE
        bottle.response.content_type = "application/json"
        return _json(report.as_dict())

    @app.get("/metrics")
    def _metrics() -> bytes:
        bottle.response.content_type = CONTENT_TYPE_LATEST
        return metrics()

    @app.get("/series")
    def _series() -> bytes:
        bottle.response.content_type = "application/json"
        return _json(series())

    @app.get("/associations")
    def _associations() -> bytes:
        limit = min(max(int(bottle.request.query.get("limit", "50") or 50), 1), 1000)
        bottle.response.content_type = "application/json"
        return _json(associations(limit))

    @app.error(HTTPStatus.NOT_FOUND)
    def _not_found(error: bottle.HTTPError) -> str:
        bottle.response.content_type = "text/plain"
        return "not found: " + ", ".join(ROUTES)

    @app.error(HTTPStatus.INTERNAL_SERVER_ERROR)
    def _failed(error: bottle.HTTPError) -> str:
        log.error("HTTP %s failed: %s", bottle.request.path, error.exception, exc_info=error.exception)
        bottle.response.content_type = "text/plain"
        return f"{type(error.exception).__name__}: {error.exception}"

    return app


class StatusServer:
    """Serves :func:`build_app` from a daemon thread until stop()."""

    def __init__(
        self,
        settings: HttpSettings,
        health: Callable[[], Health],
        metrics: Callable[[], bytes],
        series: Callable[[], list[dict[str, Any]]],
        associations: Callable[[int], list[dict[str, Any]]],
        page: Callable[[], str],
    ) -> None:
        self.auth = HttpAuth(settings)
        app = build_app(self.auth, health, metrics, series, associations, page)
        self._server = make_server(settings.host, settings.port, app, _ThreadingServer, _QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-status", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        auth = "token or basic auth required but on /healthz" if self.auth.required else "no credentials asked"
        log.info("HTTP status on http://%s:%d (%s; %s)", *self.address, " ".join(ROUTES), auth)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

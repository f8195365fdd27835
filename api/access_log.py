"""Per-request log context and one access-log line per request (docs/operations.md#logs).

Every line logged while a request is handled carries its ``request_id`` (and, once known, its ``tenant``); the
request's own line adds ``method``, ``path``, ``status`` and ``duration_ms``.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, g, request

from api.request_context import request_id
from inferno_jobs import logs

log = logging.getLogger("inferno.access")

QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})  # probes and scrapes log at DEBUG


def init_app(app: Flask) -> None:
    """Bind the request's log context first thing, and log the request when its response is ready."""

    @app.before_request
    def _bind():
        g._log_token = logs.bind(request_id=request_id())
        g._started = time.monotonic()

    @app.after_request
    def _log(response):
        started = g.get("_started")
        level = logging.DEBUG if request.path in QUIET_PATHS else logging.INFO
        log.log(level, "request", extra={
            "method": request.method, "path": request.path, "status": response.status_code,
            "duration_ms": round((time.monotonic() - started) * 1000, 2) if started else None,
            "tenant": g.get("tenant"), "remote_addr": request.remote_addr})
        return response

    @app.teardown_request
    def _unbind(exc=None):
        token = g.pop("_log_token", None)
        if token is not None:
            try:
                logs.reset(token)
            except ValueError:  # a token from another context (streamed responses finish elsewhere)
                logs.reset()

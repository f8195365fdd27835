"""Per-request log context and one access-log line per request (docs/operations.md#logs).

Every line logged while a request is handled carries its ``request_id`` (and, once known, its ``tenant``); the
request's own line adds ``method``, ``path``, ``status`` and ``duration_ms``, and for a request that created jobs
``job_id``, ``model``, ``priority`` and ``type`` of the first (``job_ids`` lists them all when there are several).
"""

from __future__ import annotations

import logging
import time

from flask import Flask, g, request

from api.request_context import request_id
from inferno_jobs import logs

log = logging.getLogger("inferno.access")

QUIET_PATHS = frozenset({"/health", "/ready", "/livez", "/metrics"})  # probes and scrapes log at DEBUG


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
        extra = {"method": request.method, "path": request.path, "status": response.status_code,
                 "duration_ms": round((time.monotonic() - started) * 1000, 2) if started else None,
                 "tenant": g.get("tenant"), "remote_addr": request.remote_addr}
        jobs = g.get("created_jobs")
        if jobs:  # the jobs it created (api.jobs.submit): one line per request, not one more per job
            first = jobs[0]
            extra.update(job_id=first.id, model=first.model, priority=first.priority.value, type=first.type.value)
            if first.batch_id:
                extra["batch_id"] = first.batch_id
            if len(jobs) > 1:
                extra["job_ids"] = [job.id for job in jobs]
        log.log(level, "request", extra=extra)
        return response

    @app.teardown_request
    def _unbind(exc=None):
        token = g.pop("_log_token", None)
        if token is not None:
            try:
                logs.reset(token)
            except ValueError:  # a token from another context (streamed responses finish elsewhere)
                logs.reset()

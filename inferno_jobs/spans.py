"""The span log behind ``GET /traces``: a summary of each finished span of the API and the workers, newest first,
in one capped Redis list (``INFERNO_TRACES_KEPT`` entries), so every API replica answers with the same spans.

:class:`SpanRecorder` is an OpenTelemetry span exporter that ``inferno_jobs/tracing.py`` runs behind a
``BatchSpanProcessor``: spans are written from that processor's background thread, many per pipeline, so a request
never waits on Redis, and a Redis outage only loses spans (logged, at most once a minute), never a request or a task.
Reading needs no OpenTelemetry.
"""

from __future__ import annotations

import json
import logging
import time

import redis

from inferno_jobs.job import isoformat
from inferno_jobs.keyspace import Keyspace

log = logging.getLogger(__name__)

MAX_ATTRIBUTES = 24
MAX_ATTRIBUTE_CHARS = 256
# Probes and scrapes would push every job's spans out of the log: they are not recorded (OTLP still gets them).
UNRECORDED_ROUTES = frozenset({"/metrics", "/health", "/ready", "/traces"})


def summary(span) -> dict:
    """One finished span (an OpenTelemetry ``ReadableSpan``) as ``GET /traces`` lists it."""
    context = span.get_span_context()
    status = getattr(span.status.status_code, "name", "UNSET").lower()
    attributes = {}
    for key, value in list((span.attributes or {}).items())[:MAX_ATTRIBUTES]:
        if isinstance(value, (bool, int, float)):
            attributes[key] = value
        else:
            attributes[key] = str(value)[:MAX_ATTRIBUTE_CHARS]
    resource = span.resource.attributes if span.resource is not None else {}
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_span_id": format(span.parent.span_id, "016x") if span.parent is not None else None,
        "operation_name": span.name,
        "start_time": isoformat(span.start_time / 1e9),
        "duration_ms": round((span.end_time - span.start_time) / 1e6, 3),
        "status": "error" if status == "error" else "ok",
        "kind": getattr(span.kind, "name", str(span.kind)).lower(),
        "component": resource.get("inferno.component"),
        "attributes": attributes,
    }


class SpanLog:
    """The capped list of span summaries of one deployment."""

    def __init__(self, client: redis.Redis, keys: Keyspace, kept: int):
        self.redis = client
        self.key = keys.traces()
        self.kept = max(1, kept)

    def append(self, summaries: list[dict]) -> None:
        """Add summaries, oldest first (the last becomes the newest), and drop what is past the cap."""
        if not summaries:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpush(self.key, *(json.dumps(s, separators=(",", ":")) for s in summaries))
            pipe.ltrim(self.key, 0, self.kept - 1)
            pipe.execute()

    def recent(self, limit: int, trace_id: str | None = None, operation: str | None = None) -> list[dict]:
        """The newest ``limit`` summaries, of one trace and/or whose operation name contains ``operation``."""
        out = []
        for raw in self.redis.lrange(self.key, 0, self.kept - 1):
            span = json.loads(raw)
            if trace_id and span["trace_id"] != trace_id.lower():
                continue
            if operation and operation.lower() not in span["operation_name"].lower():
                continue
            out.append(span)
            if len(out) >= limit:
                break
        return out


class SpanRecorder:
    """A span exporter (OpenTelemetry's ``SpanExporter`` interface) that appends span summaries to a
    :class:`SpanLog`. Its target can be replaced (:meth:`point_at`): a process has one tracer provider, tests
    build several apps."""

    WARN_EVERY_S = 60

    def __init__(self, span_log: SpanLog):
        self.span_log = span_log
        self._warned_at = 0.0

    def point_at(self, span_log: SpanLog) -> None:
        """Record into ``span_log`` from now on."""
        self.span_log = span_log

    def export(self, spans):
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            self.span_log.append([summary(span) for span in spans
                                  if (span.attributes or {}).get("http.route") not in UNRECORDED_ROUTES])
        except Exception as exc:  # Redis down or slow: lose these spans, never anything else
            if time.monotonic() - self._warned_at > self.WARN_EVERY_S:
                self._warned_at = time.monotonic()
                log.warning("spans not recorded for GET /traces: %s", exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

"""Optional OpenTelemetry tracing (the ``otel`` extra): on with ``INFERNO_TRACING=on`` or when
``INFERNO_OTEL_ENDPOINT`` is set, off otherwise.

When on, the API's Flask requests and every Celery publish and task become spans. The Celery instrumentation puts
the trace context in each message's headers when a task is sent and continues the trace when a worker runs it, so
one trace follows a job from ``POST /jobs`` to the worker (and to the webhook task the worker sends). Every
finished span is summarised into Redis for ``GET /traces`` (``inferno_jobs/spans.py``); with an endpoint the spans
are also exported over OTLP/HTTP. Without the packages, or with tracing off, nothing here does anything.
"""

from __future__ import annotations

import logging

import redis

from inferno_jobs.config import Settings
from inferno_jobs.keyspace import Keyspace
from inferno_jobs.spans import SpanLog, SpanRecorder

log = logging.getLogger(__name__)

_ready = False
_recorder: SpanRecorder | None = None
_provider = None


def enabled(settings: Settings) -> bool:
    """Whether tracing is on: ``INFERNO_TRACING=on``, or an OTLP endpoint is set."""
    return settings.tracing.strip().lower() in {"on", "1", "true", "yes"} or bool(settings.otel_endpoint)


def setup(settings: Settings, component: str, redis_client: redis.Redis | None = None) -> bool:
    """Install a tracer provider recording spans for ``GET /traces`` (into ``redis_client``, default
    ``REDIS_URL``) and exporting them to ``INFERNO_OTEL_ENDPOINT`` when set, and instrument Celery; True when on.

    Call once per process, after fork in prefork workers (the span processors run background threads). A later
    call (another app in the same process) points the span log at its own Redis and keys.
    """
    global _ready, _recorder, _provider
    if not enabled(settings):
        return False
    span_log = SpanLog(redis_client or redis.Redis.from_url(settings.redis_url), Keyspace(settings.key_prefix),
                       settings.traces_kept)
    if _ready:
        _recorder.point_at(span_log)
        return True
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("tracing is on but the otel extra is not installed (pip install 'inferno-jobs[otel]'); "
                    "tracing stays off")
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": settings.otel_service_name,
                                                        "service.namespace": "inferno-jobs",
                                                        "inferno.component": component}))
    _recorder = SpanRecorder(span_log)
    provider.add_span_processor(BatchSpanProcessor(_recorder, schedule_delay_millis=1000))
    if settings.otel_endpoint:
        endpoint = settings.otel_endpoint.rstrip("/")
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
            endpoint=endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces")))
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument()
    _provider = provider
    _ready = True
    return True


def flush(timeout_s: float = 5) -> bool:
    """Hand every finished span to its exporters now (GET /traces shows them); True when all were handed over."""
    return _provider.force_flush(int(timeout_s * 1000)) if _provider is not None else True


def instrument_flask(app, settings: Settings) -> bool:
    """Trace the API's requests (and the Celery messages they send); True when tracing is on."""
    if not setup(settings, "api", app.extensions["inferno"].redis):
        return False
    try:
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
    except ImportError:
        return False
    FlaskInstrumentor().instrument_app(app)
    return True

"""Optional OpenTelemetry tracing (the ``otel`` extra), off unless ``INFERNO_OTEL_ENDPOINT`` is set.

When on, the API's Flask requests and every Celery publish and task become spans exported over OTLP/HTTP. The
Celery instrumentation puts the trace context in each message's headers when a task is sent and continues the
trace when a worker runs it, so one trace follows a job from ``POST /jobs`` to the worker (and to the webhook
task the worker sends). Without the packages, or without the setting, nothing here does anything.
"""

from __future__ import annotations

import logging

from inferno_jobs.config import Settings

log = logging.getLogger(__name__)

_ready = False


def setup(settings: Settings, component: str) -> bool:
    """Install a tracer provider exporting to ``INFERNO_OTEL_ENDPOINT`` and instrument Celery; True when on.

    Call once per process, after fork in prefork workers (the exporter runs a background thread).
    """
    global _ready
    if not settings.otel_endpoint:
        return False
    if _ready:
        return True
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("INFERNO_OTEL_ENDPOINT is set but the otel extra is not installed "
                    "(pip install 'inferno-jobs[otel]'); tracing stays off")
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": settings.otel_service_name,
                                                        "service.namespace": "inferno-jobs",
                                                        "inferno.component": component}))
    endpoint = settings.otel_endpoint.rstrip("/")
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
        endpoint=endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces")))
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument()
    _ready = True
    return True


def instrument_flask(app, settings: Settings) -> bool:
    """Trace the API's requests (and the Celery messages they send); True when tracing is on."""
    if not setup(settings, "api"):
        return False
    try:
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
    except ImportError:
        return False
    FlaskInstrumentor().instrument_app(app)
    return True

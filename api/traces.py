"""``GET /traces`` (shared/seeds/000): the latest finished spans of the API and the workers, newest first.

Spans are recorded while tracing is on (``INFERNO_TRACING=on`` or ``INFERNO_OTEL_ENDPOINT``; inferno_jobs/tracing.py)
into a capped Redis list (inferno_jobs/spans.py). With tracing off the route answers 404 naming the setting.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from marshmallow import Schema, fields, validate

from api.body import load
from api.controls import require_admin
from api.request_context import services
from inferno_jobs import tracing
from inferno_jobs.errors import NotFound
from inferno_jobs.schemas import StrictSchema
from inferno_jobs.spans import SpanLog

bp = Blueprint("traces", __name__)


class TraceQuery(StrictSchema):
    """``?limit=&trace_id=&operation=``."""

    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))
    trace_id = fields.String(load_default=None, validate=validate.Regexp(
        r"^[0-9a-fA-F]{32}$", error="trace_id must be 32 hexadecimal characters"))
    operation = fields.String(load_default=None, validate=validate.Length(1, 200))


class TraceSpan(Schema):
    """One finished span, in seed 000's shape plus where it ran."""

    trace_id = fields.String()
    span_id = fields.String()
    parent_span_id = fields.String(allow_none=True)
    operation_name = fields.String()
    start_time = fields.String()
    duration_ms = fields.Float()
    status = fields.String(validate=validate.OneOf(["ok", "error"]))
    kind = fields.String()
    component = fields.String(allow_none=True)
    attributes = fields.Dict()


class TraceList(Schema):
    """``GET /traces``."""

    traces = fields.List(fields.Nested(TraceSpan))


@bp.get("/traces")
def list_traces():
    """The newest spans (``limit``, 1..1000, default 100), of one ``trace_id``, whose name contains ``operation``.

    Admin keys and operators only: the spans are every tenant's requests (paths with their ids and query
    strings, client addresses, user agents)."""
    require_admin()
    svc = services()
    if not tracing.enabled(svc.settings):
        raise NotFound("tracing is off: set INFERNO_TRACING=on (or INFERNO_OTEL_ENDPOINT) on the API and the "
                       "workers to record spans for GET /traces", details={"setting": "INFERNO_TRACING"})
    query = load(TraceQuery(), request.args.to_dict())
    spans = SpanLog(svc.redis, svc.store.keys, svc.settings.traces_kept).recent(
        query["limit"], trace_id=query["trace_id"], operation=query["operation"])
    return jsonify(TraceList().dump({"traces": spans}))


# path -> method -> (summary, request schema name or None, success status, response schema name or None, error
# statuses), merged into GET /openapi.json by api/openapi.py; SCHEMAS: name -> marshmallow schema class.
ROUTES: dict = {
    "/traces": {"get": ("The latest finished spans of the API and workers, newest first (?limit, trace_id, "
                        "operation; admin key); 404 while tracing is off", None, 200, "TraceList",
                        (400, 401, 403, 404))},
}
SCHEMAS: dict = {"TraceList": TraceList}

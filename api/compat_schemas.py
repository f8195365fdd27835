"""marshmallow schemas of the seed request bodies, and :func:`load_request` for them and the OpenAI-compatible
(/v1) bodies (:mod:`inferno_jobs.openai_request`).

Their messages are the ones users of those APIs expect (shared/seeds/003: "model is required", "temperature must
be between 0 and 2", "input length must not exceed 8000"...); :func:`load_request` turns the first failing field
into one :class:`InvalidRequest` whose ``details.field`` becomes OpenAI's ``param``.
"""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from inferno_jobs.errors import InvalidRequest
# The OpenAI bodies live in the core, where batch lines are validated with them too; re-exported for the seeds.
from inferno_jobs.openai_request import (ChatRequest, CompatSchema, CompletionRequest, EmbeddingRequest,  # noqa: F401
                                         Generation, Message, between, check_embedding_input, error_fields,
                                         required_messages)
from inferno_jobs.schemas import StrictBoolean


class InferenceRequest(Generation):
    """The seeds' ``POST /inference`` and ``/inference/stream`` (a prompt), also ``WS /ws`` (prompt or messages)."""

    prompt = fields.String(validate=validate.Length(min=1, error="prompt must not be empty"))
    top_k = fields.Integer(allow_none=True, strict=True, validate=validate.Range(0, 100_000))
    repeat_penalty = fields.Float(allow_none=True, validate=between("repeat_penalty", 0.01, 10))

    @validates_schema
    def _prompt(self, data, **kwargs):
        if not data.get("prompt"):
            raise ValidationError("prompt is required", "prompt")


class WebSocketInference(InferenceRequest):
    """``{"type": "inference", "id", "model", "prompt" | "messages", ...}`` on ``WS /ws``."""

    type = fields.String()
    id = fields.String(allow_none=True, validate=validate.Length(max=128))
    messages = fields.List(fields.Nested(Message), validate=validate.Length(min=1, error="messages must not be empty"))
    stream = StrictBoolean(load_default=True)

    @validates_schema
    def _prompt(self, data, **kwargs):
        if bool(data.get("prompt")) == bool(data.get("messages")):
            raise ValidationError("give a prompt or messages (one of them)", "prompt")


class PredictRequest(CompatSchema):
    """The seeds' ``POST /predict`` (``model`` added: the repository holds several models)."""

    features = fields.List(fields.List(fields.Float(allow_nan=False)), required=True,
                           error_messages=required_messages("features"), validate=validate.Length(
                               min=1, max=10_000, error="features must have 1 to 10000 rows"))
    request_id = fields.String(allow_none=True, validate=validate.Length(max=128))
    model = fields.String(allow_none=True)

    @validates_schema
    def _rows(self, data, **kwargs):
        check_rows(data.get("features") or [], "features")


def check_rows(rows: list, field: str) -> None:
    """Rows of a 2-D feature array are non-empty and of one length."""
    if any(not row for row in rows) or len({len(row) for row in rows}) > 1:
        raise ValidationError("features must be a 2-D array: non-empty rows of equal length", field)


class PredictAsyncRequest(PredictRequest):
    """The seeds' ``POST /predict/async``."""

    priority = fields.String(load_default="normal", validate=validate.OneOf(
        ["high", "normal", "low"], error="priority must be high, normal or low"))
    timeout_ms = fields.Float(allow_none=True, validate=validate.Range(min=1, error="timeout_ms must be >= 1"))


class PredictBatchRequest(CompatSchema):
    """The seeds' ``POST /predict/batch``: one job per item, all high priority (they micro-batch together)."""

    batch = fields.List(fields.List(fields.List(fields.Float(allow_nan=False))), required=True,
                        error_messages=required_messages("batch"),
                        validate=validate.Length(min=1, max=256, error="batch must have 1 to 256 items"))
    request_ids = fields.List(fields.String(validate=validate.Length(max=128)), allow_none=True)
    model = fields.String(allow_none=True)

    @validates_schema
    def _items(self, data, **kwargs):
        for i, rows in enumerate(data.get("batch") or []):
            if not rows:
                raise ValidationError(f"batch item {i} has no rows", "batch")
            check_rows(rows, "batch")
        ids = data.get("request_ids")
        if ids is not None and len(ids) != len(data.get("batch") or []):
            raise ValidationError("request_ids must have one id per batch item", "request_ids")


def load_request(schema: Schema, data) -> dict:
    """``schema.load(data)``; the failing fields become one 400 ``INVALID_REQUEST`` (``details.field``: the first)."""
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        return schema.load(data)
    except ValidationError as exc:
        problems = list(error_fields(exc.messages))
        first_field = problems[0][0] if problems else None
        text = "; ".join(_phrase(field, message) for field, message in problems) or "invalid request"
        raise InvalidRequest(text, details={"field": first_field, "errors": exc.messages}) from exc


def _phrase(field: str, message: str) -> str:
    if message == "Unknown field.":
        return f"Unrecognized request argument supplied: {field}"
    leaf = field.rsplit(".", 1)[-1]
    return message if not field or message.startswith(leaf) else f"{field}: {message}"

"""marshmallow schemas of the OpenAI-compatible (/v1) and seed request bodies.

Their messages are the ones users of those APIs expect (shared/seeds/003: "model is required", "temperature must
be between 0 and 2", "input length must not exceed 8000"...); :func:`load_request` turns the first failing field
into one :class:`InvalidRequest` whose ``details.field`` becomes OpenAI's ``param``.
"""

from __future__ import annotations

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from inferno_jobs.errors import InvalidRequest
from inferno_jobs.schemas import MAX_EMBEDDING_CHARS, MAX_EMBEDDING_ITEMS, MAX_MAX_TOKENS


def _between(name: str, low, high) -> validate.Range:
    return validate.Range(low, high, error=f"{name} must be between {low} and {high}")


def _required(name: str) -> dict:
    return {"required": f"{name} is required", "null": f"{name} is required"}


class CompatSchema(Schema):
    """Unknown fields are refused, as OpenAI does ("Unrecognized request argument")."""

    class Meta:
        unknown = RAISE

    def handle_error(self, error, data, **kwargs):
        raise error


class Generation(CompatSchema):
    """Sampling parameters common to chat, completions and the seeds' /inference."""

    model = fields.String(required=True, error_messages=_required("model"),
                          validate=validate.Length(min=1, error="model is required"))
    max_tokens = fields.Integer(allow_none=True, strict=True, validate=_between("max_tokens", 1, MAX_MAX_TOKENS))
    temperature = fields.Float(allow_none=True, validate=_between("temperature", 0, 2))
    top_p = fields.Float(allow_none=True, validate=_between("top_p", 0, 1))
    stop = fields.Raw(allow_none=True)
    seed = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=0, error="seed must be >= 0"))
    stream = fields.Boolean(load_default=False)

    @validates_schema
    def _stop(self, data, **kwargs):
        stop = data.get("stop")
        if stop is None:
            return
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not 1 <= len(stops) <= 4 or not all(isinstance(s, str) and s
                                                                             for s in stops):
            raise ValidationError("stop must be a non-empty string or a list of up to 4 of them", "stop")
        data["stop"] = stops


class OpenAIGeneration(Generation):
    """Parameters OpenAI's chat and completions share; some are accepted only at their default."""

    n = fields.Integer(allow_none=True, validate=validate.Equal(1, error="n must be 1 (one choice per request)"))
    presence_penalty = fields.Float(allow_none=True, validate=_between("presence_penalty", -2, 2))
    frequency_penalty = fields.Float(allow_none=True, validate=_between("frequency_penalty", -2, 2))
    logit_bias = fields.Dict(allow_none=True, validate=validate.Length(max=0, error="logit_bias is not supported"))
    user = fields.String(allow_none=True)
    stream_options = fields.Dict(allow_none=True)
    metadata = fields.Dict(allow_none=True)


class Message(CompatSchema):
    """One chat message; ``content`` a string or a list of text parts."""

    role = fields.String(required=True, error_messages=_required("role"),
                         validate=validate.OneOf(["system", "developer", "user", "assistant"],
                                                 error="role must be one of system, developer, user, assistant"))
    content = fields.Raw(required=True, error_messages=_required("content"))
    name = fields.String(allow_none=True)

    @validates_schema
    def _content(self, data, **kwargs):
        content = data.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ValidationError("content parts must be {\"type\": \"text\", \"text\": ...}", "content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ValidationError("content must be a string or a list of text parts", "content")
        data["content"] = content
        data["role"] = "system" if data["role"] == "developer" else data["role"]


class ChatRequest(OpenAIGeneration):
    """``POST /v1/chat/completions``."""

    messages = fields.List(fields.Nested(Message), required=True, error_messages=_required("messages"),
                           validate=validate.Length(min=1, error="messages must not be empty"))
    max_completion_tokens = fields.Integer(allow_none=True, strict=True,
                                           validate=_between("max_completion_tokens", 1, MAX_MAX_TOKENS))
    logprobs = fields.Boolean(allow_none=True, validate=validate.Equal(False, error="logprobs is not supported"))
    top_logprobs = fields.Integer(allow_none=True, validate=validate.Equal(0, error="logprobs is not supported"))
    response_format = fields.Dict(allow_none=True)

    @validates_schema
    def _format(self, data, **kwargs):
        if (data.get("response_format") or {"type": "text"}).get("type") != "text":
            raise ValidationError("only response_format {\"type\": \"text\"} is supported", "response_format")


class CompletionRequest(OpenAIGeneration):
    """``POST /v1/completions``: ``prompt`` one string or a list of them (one job each)."""

    prompt = fields.Raw(required=True, error_messages=_required("prompt"))
    echo = fields.Boolean(allow_none=True, validate=validate.Equal(False, error="echo is not supported"))
    suffix = fields.String(allow_none=True, validate=validate.Length(max=0, error="suffix is not supported"))
    best_of = fields.Integer(allow_none=True, validate=validate.Equal(1, error="best_of must be 1"))
    logprobs = fields.Integer(allow_none=True, validate=validate.Equal(0, error="logprobs is not supported"))

    @validates_schema
    def _prompt(self, data, **kwargs):
        prompt = data.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValidationError("prompt must be a string or a non-empty list of strings (token arrays are not "
                                  "supported)", "prompt")
        if len(prompts) > 16:
            raise ValidationError("at most 16 prompts per request", "prompt")
        data["prompt"] = prompts


def check_embedding_input(value) -> list[str]:
    """The texts of an embedding request; raises :class:`ValidationError` with the seed-003 messages."""
    texts = [value] if isinstance(value, str) else value
    if value is None or not isinstance(texts, list) or not texts:
        raise ValidationError("input is required", "input")
    if len(texts) > MAX_EMBEDDING_ITEMS:
        raise ValidationError(f"input must have at most {MAX_EMBEDDING_ITEMS} items", "input")
    for i, text in enumerate(texts):
        where = "" if isinstance(value, str) else f" (item {i})"
        if not isinstance(text, str):
            raise ValidationError(f"input must be a string or a list of strings{where}; token arrays are not "
                                  "supported", "input")
        if not text.strip():
            raise ValidationError(f"input is required{where}", "input")
        if len(text) > MAX_EMBEDDING_CHARS:
            raise ValidationError(f"input length must not exceed {MAX_EMBEDDING_CHARS} characters{where}; it has "
                                  f"{len(text)}", "input")
    return texts


class EmbeddingRequest(CompatSchema):
    """``POST /v1/embeddings`` and the seeds' ``POST /embeddings``."""

    model = fields.String(required=True, error_messages=_required("model"),
                          validate=validate.Length(min=1, error="model is required"))
    input = fields.Raw(required=True, error_messages=_required("input"))
    encoding_format = fields.String(load_default="float", validate=validate.OneOf(
        ["float", "base64"], error="encoding_format must be float or base64"))
    dimensions = fields.Integer(allow_none=True)
    user = fields.String(allow_none=True)

    @validates_schema
    def _input(self, data, **kwargs):
        data["input"] = check_embedding_input(data.get("input"))


class InferenceRequest(Generation):
    """The seeds' ``POST /inference`` and ``/inference/stream`` (a prompt), also ``WS /ws`` (prompt or messages)."""

    prompt = fields.String(validate=validate.Length(min=1, error="prompt must not be empty"))
    top_k = fields.Integer(allow_none=True, strict=True, validate=validate.Range(0, 100_000))
    repeat_penalty = fields.Float(allow_none=True, validate=_between("repeat_penalty", 0.01, 10))

    @validates_schema
    def _prompt(self, data, **kwargs):
        if not data.get("prompt"):
            raise ValidationError("prompt is required", "prompt")


class WebSocketInference(InferenceRequest):
    """``{"type": "inference", "id", "model", "prompt" | "messages", ...}`` on ``WS /ws``."""

    type = fields.String()
    id = fields.String(allow_none=True, validate=validate.Length(max=128))
    messages = fields.List(fields.Nested(Message), validate=validate.Length(min=1, error="messages must not be empty"))
    stream = fields.Boolean(load_default=True)

    @validates_schema
    def _prompt(self, data, **kwargs):
        if bool(data.get("prompt")) == bool(data.get("messages")):
            raise ValidationError("give a prompt or messages (one of them)", "prompt")


class PredictRequest(CompatSchema):
    """The seeds' ``POST /predict`` (``model`` added: the repository holds several models)."""

    features = fields.List(fields.List(fields.Float(allow_nan=False)), required=True,
                           error_messages=_required("features"), validate=validate.Length(
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
                        error_messages=_required("batch"),
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
        problems = list(_flatten(exc.messages))
        first_field = problems[0][0] if problems else None
        text = "; ".join(_phrase(field, message) for field, message in problems) or "invalid request"
        raise InvalidRequest(text, details={"field": first_field, "errors": exc.messages}) from exc


def _flatten(messages, prefix: str = ""):
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = prefix if key == "_schema" else (f"{prefix}.{key}" if prefix else str(key))
            yield from _flatten(value, name)
    elif isinstance(messages, list):
        for message in messages:
            yield from _flatten(message, prefix)
    else:
        yield prefix, str(messages)


def _phrase(field: str, message: str) -> str:
    if message == "Unknown field.":
        return f"Unrecognized request argument supplied: {field}"
    leaf = field.rsplit(".", 1)[-1]
    return message if not field or message.startswith(leaf) else f"{field}: {message}"

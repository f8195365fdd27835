"""marshmallow schemas for every request and response of the native API."""

from __future__ import annotations

import functools
import ipaddress
import re

from marshmallow import (EXCLUDE, RAISE, Schema, ValidationError, fields, post_load, validate, validates_schema)

from inferno_jobs import importance
from inferno_jobs.job import EVENT_FOR_STATUS, JobStatus, JobType, Priority, is_id

MAX_EMBEDDING_CHARS = 8000
MAX_EMBEDDING_ITEMS = 2048
MAX_MAX_TOKENS = 2_000_000
MAX_PROMPTS = 16  # prompts in one completion input (OpenAI's limit for a list ``prompt``)
ENCODING_FORMATS = ("float", "base64")  # embeddings: numbers, or base64 of their float32 bytes (vectors.py)
MAX_CHOICES = 128  # choices in one generation input, ``n`` times its prompts (OpenAI's limit for ``n``)
MAX_TOP_LOGPROBS = 20  # most likely alternatives per generated token (OpenAI's limit for ``top_logprobs``)
WEBHOOK_EVENTS = sorted(EVENT_FOR_STATUS.values())


@functools.cache
def shared(schema_cls: type[Schema]) -> Schema:
    """One reusable instance of ``schema_cls``: building a schema deep-copies its fields (about a fifth of a
    millisecond for a job), too much to do on every request of the hot paths."""
    return schema_cls()


class StrictSchema(Schema):
    """Unknown fields are an error, so a misspelt parameter is never silently ignored."""

    class Meta:
        unknown = RAISE


class StrictBoolean(fields.Boolean):
    """``true`` or ``false`` only: marshmallow's Boolean also takes ``1``, ``"yes"`` and ``"on"``, which OpenAI's
    API refuses (``"stream": "no"`` would stream)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


CHAT_ROLES = ("system", "developer", "user", "assistant")


def text_content(content) -> str:
    """A chat message's ``content`` as one string: a string, or a list of OpenAI text parts joined."""
    if isinstance(content, list):
        if not content:  # OpenAI's rule too: a list of parts has at least one
            raise ValidationError("content must be a string or a non-empty list of text parts", "content")
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise ValidationError("content parts must be {\"type\": \"text\", \"text\": ...}", "content")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ValidationError("content must be a string or a list of text parts", "content")
    return content


def check_top_logprobs(data: dict) -> None:
    """``top_logprobs`` only with ``logprobs: true`` (native inputs and OpenAI's chat bodies alike)."""
    if data.get("top_logprobs") is not None and not data.get("logprobs"):
        raise ValidationError("top_logprobs needs logprobs: true", "top_logprobs")


class GenerationParams(StrictSchema):
    """Sampling parameters shared by completion and chat."""

    # Left out: the model's ``default_max_tokens`` (config.json), which the worker applies.
    max_tokens = fields.Integer(strict=True, validate=validate.Range(1, MAX_MAX_TOKENS))
    temperature = fields.Float(validate=validate.Range(0, 2), load_default=1.0)
    top_p = fields.Float(validate=validate.Range(0, 1), load_default=1.0)
    top_k = fields.Integer(strict=True, validate=validate.Range(0, 100_000), load_default=0)
    repetition_penalty = fields.Float(validate=validate.Range(0.01, 10), load_default=1.0)
    presence_penalty = fields.Float(validate=validate.Range(-2, 2), load_default=0.0)
    frequency_penalty = fields.Float(validate=validate.Range(-2, 2), load_default=0.0)
    stop = fields.Raw(load_default=None)
    seed = fields.Integer(strict=True, load_default=None, allow_none=True,
                          validate=validate.Range(min=0, error="seed must be >= 0"))
    stream = StrictBoolean()  # publish tokens as they are generated (GET /jobs/<id>/events); runs unbatched
    # Choices per prompt; above 1 the result has ``choices`` (choice j sampled with seed + j).
    n = fields.Integer(strict=True, validate=validate.Range(1, MAX_CHOICES))
    # The log probability of each generated token (and of its ``top_logprobs`` most likely alternatives) in the
    # result's ``logprobs``: docs/models.md#log-probabilities.
    logprobs = StrictBoolean()
    top_logprobs = fields.Integer(strict=True, validate=validate.Range(0, MAX_TOP_LOGPROBS))

    @validates_schema
    def _top_logprobs(self, data, **kwargs):
        check_top_logprobs(data)

    @validates_schema
    def _n(self, data, **kwargs):
        if data.get("n", 1) > 1 and data.get("stream"):
            raise ValidationError("n > 1 cannot stream: stream one choice per job", "n")

    @validates_schema
    def _stop(self, data, **kwargs):
        stop = data.get("stop")
        if stop is None:
            return
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 8:
            raise ValidationError("stop must be a non-empty string or a list of at most 8 of them", "stop")
        data["stop"] = stop


class CompletionInput(GenerationParams):
    """``input`` of a completion job: ``prompt`` one string, or a list of up to 16 (one text each, in order; the
    result then has ``choices``, ``n`` of them per prompt). A list cannot stream."""

    prompt = fields.Raw(required=True)

    @validates_schema
    def _prompt(self, data, **kwargs):
        prompt = data.get("prompt")
        prompts = prompt if isinstance(prompt, list) else [prompt]
        # An empty prompt starts from the end-of-text token (docs/models.md), as on /v1/completions.
        if not prompts or len(prompts) > MAX_PROMPTS or not all(isinstance(p, str) for p in prompts):
            raise ValidationError(f"prompt must be a string or a list of 1 to {MAX_PROMPTS} of them", "prompt")
        if isinstance(prompt, list) and data.get("stream"):
            raise ValidationError("a list of prompts cannot stream: stream one prompt per job", "prompt")
        if len(prompts) * data.get("n", 1) > MAX_CHOICES:
            raise ValidationError(f"n times the number of prompts must be at most {MAX_CHOICES}", "n")


class Message(StrictSchema):
    """One chat message: ``content`` a string or a list of text parts (stored joined); ``developer`` is stored as
    ``system``, as OpenAI's newer name for it."""

    role = fields.String(required=True, validate=validate.OneOf(CHAT_ROLES))
    content = fields.Raw(required=True)

    @validates_schema
    def _content(self, data, **kwargs):
        data["content"] = text_content(data.get("content"))
        data["role"] = "system" if data["role"] == "developer" else data["role"]


class ChatInput(GenerationParams):
    """``input`` of a chat job."""

    messages = fields.List(fields.Nested(Message), required=True, validate=validate.Length(min=1))
    # Variables for the model's Jinja chat template; one the template does not use fails the job.
    chat_template_kwargs = fields.Dict(keys=fields.String(), allow_none=True)


class EmbeddingInput(StrictSchema):
    """``input`` of an embedding job: one string or a list of strings."""

    input = fields.Raw(required=True)
    dimensions = fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=1))  # the model's own only
    # float (default): lists of numbers; base64: each vector as base64 of its little-endian float32 bytes
    encoding_format = fields.String(validate=validate.OneOf(ENCODING_FORMATS))

    @validates_schema
    def _input(self, data, **kwargs):
        value = data.get("input")
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise ValidationError("input must be a non-empty string or a non-empty list of strings", "input")
        if len(items) > MAX_EMBEDDING_ITEMS:
            raise ValidationError(f"at most {MAX_EMBEDDING_ITEMS} strings per job", "input")
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item.strip():
                raise ValidationError(f"item {i} must be a non-empty string", "input")
            if len(item) > MAX_EMBEDDING_CHARS:
                raise ValidationError(f"item {i} is longer than {MAX_EMBEDDING_CHARS} characters", "input")


class PredictInput(StrictSchema):
    """``input`` of a predict job: a 2-D list of numbers, one row per sample."""

    features = fields.List(fields.List(fields.Float(allow_nan=False)), required=True,
                           validate=validate.Length(min=1, max=10_000))

    @validates_schema
    def _rows(self, data, **kwargs):
        rows = data.get("features") or []
        if any(not row for row in rows) or len({len(row) for row in rows}) > 1:
            raise ValidationError("features must be non-empty rows of equal length", "features")


class FeatureImportanceInput(StrictSchema):
    """``input`` of a feature_importance job: one row, and how to permute it (inferno_jobs/importance.py).

    A missing ``seed`` is drawn here, so the stored job (and any later attempt of it) is reproducible.
    """

    features = fields.List(fields.List(fields.Float(allow_nan=False), validate=validate.Length(min=1)),
                           required=True, validate=validate.Length(
                               equal=1, error="feature importance explains one row: features must be [[...]]"))
    method = fields.String(load_default=importance.METHOD, validate=validate.OneOf([importance.METHOD]))
    n_repeats = fields.Integer(strict=True, load_default=importance.DEFAULT_N_REPEATS,
                               validate=validate.Range(1, importance.MAX_N_REPEATS))
    seed = fields.Integer(strict=True, load_default=None, allow_none=True,
                          validate=validate.Range(0, importance.SEED_LIMIT - 1))

    @post_load
    def _seed(self, data, **kwargs):
        if data.get("seed") is None:
            data["seed"] = importance.new_seed()
        return data


INPUT_SCHEMAS = {
    JobType.COMPLETION: CompletionInput,
    JobType.CHAT: ChatInput,
    JobType.EMBEDDING: EmbeddingInput,
    JobType.PREDICT: PredictInput,
    JobType.FEATURE_IMPORTANCE: FeatureImportanceInput,
}


class _HttpUrl(validate.URL):
    """marshmallow's URL check, which also takes every IPv6 literal: its pattern refuses the ones ending in an
    IPv4 address (``[::ffff:127.0.0.1]``), which the SSRF guard judges by that address."""

    def __call__(self, value: str) -> str:
        try:
            return super().__call__(value)
        except ValidationError:
            literal = re.match(r"^https?://(?:[^@/]*@)?\[([0-9A-Fa-f:.]+)\]", value or "")
            try:
                ipaddress.IPv6Address(literal.group(1) if literal else "")
            except ValueError:
                raise ValidationError(self._format_error(value)) from None
            super().__call__(value.replace(f"[{literal.group(1)}]", "[::1]", 1))  # the rest of it, checked
            return value


class WebhookUrl(fields.Url):
    """An http(s) callback URL; no TLD needed (``localhost``, cluster names), any IPv6 literal."""

    def __init__(self, **kwargs):
        super().__init__(schemes={"http", "https"}, require_tld=False, **kwargs)
        self.validators[0] = _HttpUrl(schemes={"http", "https"}, require_tld=False,
                                      error=self.error_messages["invalid"])


class WebhookSpec(StrictSchema):
    """Where and on which events to call back."""

    url = WebhookUrl(required=True)
    events = fields.List(fields.String(validate=validate.OneOf(WEBHOOK_EVENTS)), load_default=None,
                         validate=validate.Length(min=1))


class JobRequest(StrictSchema):
    """The body of ``POST /jobs``."""

    type = fields.Enum(JobType, by_value=True, required=True)
    model = fields.String(required=True, validate=validate.Length(min=1, max=64))
    priority = fields.Enum(Priority, by_value=True, load_default=Priority.NORMAL)
    input = fields.Dict(required=True)
    webhook = fields.Nested(WebhookSpec, load_default=None)
    webhook_url = WebhookUrl(load_default=None)
    metadata = fields.Dict(keys=fields.String(validate=validate.Length(max=64)), load_default=dict)
    # strict: 1.5 is refused, not cut to 1
    ttl_s = fields.Integer(strict=True, validate=validate.Range(min=1), load_default=None)
    timeout_s = fields.Integer(strict=True, validate=validate.Range(min=1), load_default=None)

    @validates_schema(skip_on_field_errors=True)
    def _input_for_type(self, data, **kwargs):
        schema = shared(INPUT_SCHEMAS[data["type"]])
        try:
            data["input"] = schema.load(data["input"])
        except ValidationError as exc:
            raise ValidationError({"input": exc.messages}) from exc
        if data.get("webhook_url") and data.get("webhook"):
            raise ValidationError("give webhook or webhook_url, not both", "webhook_url")
        if data.get("webhook_url"):
            data["webhook"] = {"url": data["webhook_url"], "events": None}
        if len(repr(data.get("metadata"))) > 16_384:
            raise ValidationError("metadata is larger than 16 KiB", "metadata")


class ErrorBody(Schema):
    """``error`` of an error response."""

    code = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Raw(allow_none=True)


class ErrorResponse(Schema):
    """Every error of the native API."""

    error = fields.Nested(ErrorBody, required=True)
    request_id = fields.String(required=True)
    timestamp = fields.String(required=True)


class AttemptSchema(Schema):
    """One run of a job."""

    worker = fields.String()
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    outcome = fields.String(allow_none=True)


class JobResponse(Schema):
    """The job object."""

    class Meta:
        unknown = EXCLUDE

    id = fields.String(required=True)
    object = fields.Constant("job")
    type = fields.String(validate=validate.OneOf([t.value for t in JobType]))
    model = fields.String()
    priority = fields.String(validate=validate.OneOf([p.value for p in Priority]))
    status = fields.String(validate=validate.OneOf([s.value for s in JobStatus]))
    created_at = fields.String()
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    queue_position = fields.Integer(allow_none=True)
    attempts = fields.Integer()
    attempt_history = fields.List(fields.Nested(AttemptSchema))
    batch_id = fields.String(allow_none=True)
    metadata = fields.Dict()
    cancel_requested = fields.Boolean()
    result = fields.Raw(allow_none=True)
    error = fields.Nested(ErrorBody, allow_none=True)


def cursor_field(prefix: str) -> fields.String:
    """A list's page cursor: the previous page's last id. Any id of the kind is a place in the list, even one that
    was removed; anything else is refused (it would silently start from the newest)."""
    def check(value: str) -> None:
        if not is_id(prefix, value):
            raise ValidationError(f"must be a {prefix} id: the previous page's last one")
    return fields.String(load_default=None, validate=check)


class JobListQuery(StrictSchema):
    """Query parameters of ``GET /jobs``."""

    status = fields.String(validate=validate.OneOf([s.value for s in JobStatus]), load_default=None)
    type = fields.String(validate=validate.OneOf([t.value for t in JobType]), load_default=None)
    batch_id = fields.String(load_default=None)
    limit = fields.Integer(validate=validate.Range(1, 100), load_default=20)
    cursor = cursor_field("job")


class JobList(Schema):
    """A page of jobs."""

    object = fields.Constant("list")
    data = fields.List(fields.Nested(JobResponse))
    next_cursor = fields.String(allow_none=True)


class HealthResponse(Schema):
    """``GET /health``."""

    status = fields.String()
    version = fields.String()
    uptime_seconds = fields.Float()
    redis = fields.String()
    workers = fields.Integer()
    queues = fields.Dict(keys=fields.String(), values=fields.Integer())
    models_loaded = fields.Integer(metadata={"description": "models some worker process holds loaded (seed 000)"})


class CircuitStatus(Schema):
    """A model's circuit breaker (docs/operations.md#circuit-breakers)."""

    state = fields.String(metadata={"description": "closed, open or half_open"})
    consecutive_failures = fields.Integer()
    opened_at = fields.String(allow_none=True)
    retry_after_s = fields.Integer(allow_none=True, metadata={
        "description": "open: seconds left of the cooldown; half_open: until another probe may go (0: now)"})


class ModelResponse(Schema):
    """One model of ``GET /models``."""

    id = fields.String()
    type = fields.String()
    device = fields.String()
    loaded = fields.Boolean()
    size_bytes = fields.Integer()
    max_batch_size = fields.Integer()
    capabilities = fields.List(fields.String())
    circuit = fields.Nested(CircuitStatus)
    # Seed 000's names beside the native ones (docs/seeds.md).
    name = fields.String(metadata={"description": "the model's name (its id)"})
    context_size = fields.Integer(metadata={"description": "generation models: tokens of context, prompt included"})
    model_id = fields.String(metadata={"description": "load and unload answers: the id"})
    status = fields.String(metadata={"description": "load and unload answers: loaded or unloaded once every "
                                                    "worker reports it, loading or unloading while not yet (202)"})
    load_time_ms = fields.Integer(metadata={"description": "load answers: from the command until every worker "
                                                          "reported the model loaded"})


class ModelValidation(Schema):
    """``POST /models/<id>/validate``: a sample run in a worker."""

    id = fields.String()
    type = fields.String()
    valid = fields.Boolean()
    latency_ms = fields.Float()
    providers = fields.List(fields.String())
    output_keys = fields.List(fields.String())
    worker = fields.String()
    error = fields.Nested(ErrorBody, allow_none=True)


class ModelList(Schema):
    """``GET /models``."""

    models = fields.List(fields.Nested(ModelResponse))

"""The bodies of OpenAI's inference requests (chat, completions, embeddings): their schemas and the job input each
becomes.

One definition serves both surfaces that take these bodies: the synchronous ``/v1`` endpoints (``api/``) and the
``body`` of an OpenAI batch line (:mod:`inferno_jobs.batchfile`), so a batch line accepts exactly the body its
endpoint accepts, as OpenAI's Batch API does. The messages are the ones users of those APIs expect
(shared/seeds/003: "model is required", "temperature must be between 0 and 2", "input length must not exceed
8000"...).

As in OpenAI's API, ``null`` for an optional parameter means its default. Standard parameters that ask for nothing
this server would do differently (``store``, ``metadata``, ``user``, ``service_tier``...) are accepted and ignored;
any other unknown field is refused ("Unrecognized request argument"), so a misspelt parameter never goes unnoticed.
"""

from __future__ import annotations

from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate, validates_schema

from inferno_jobs.job import JobType
from inferno_jobs.schemas import (CHAT_ROLES, ENCODING_FORMATS, MAX_CHOICES, MAX_EMBEDDING_CHARS,
                                   MAX_EMBEDDING_ITEMS, MAX_MAX_TOKENS, MAX_PROMPTS, MAX_TOP_LOGPROBS, StrictBoolean,
                                   check_top_logprobs, text_content)

# An OpenAI endpoint -> the job type its requests run as.
ENDPOINTS = {
    "/v1/chat/completions": JobType.CHAT,
    "/v1/completions": JobType.COMPLETION,
    "/v1/embeddings": JobType.EMBEDDING,
}

SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority")
MAX_LEGACY_LOGPROBS = 5  # /v1/completions' ``logprobs``: most likely alternatives per token (OpenAI's limit)


def between(name: str, low, high) -> validate.Range:
    """A range check whose message is "<name> must be between <low> and <high>"."""
    return validate.Range(low, high, error=f"{name} must be between {low} and {high}")


def required_messages(name: str) -> dict:
    """marshmallow's ``error_messages`` that make a missing or null field "<name> is required"."""
    return {"required": f"{name} is required", "null": f"{name} is required"}


class CompatSchema(Schema):
    """Unknown fields are refused, as OpenAI does ("Unrecognized request argument")."""

    class Meta:
        unknown = RAISE

    def handle_error(self, error, data, **kwargs):
        raise error


class NullIsDefault(CompatSchema):
    """A top-level ``null`` is as if the field were not sent: its default applies (OpenAI's rule). A required
    field sent as ``null`` is still "required"."""

    @pre_load
    def _drop_nulls(self, data, **kwargs):
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


class Generation(CompatSchema):
    """Sampling parameters common to chat, completions and the seeds' /inference."""

    model = fields.String(required=True, error_messages=required_messages("model"),
                          validate=validate.Length(min=1, error="model is required"))
    max_tokens = fields.Integer(allow_none=True, strict=True, validate=between("max_tokens", 1, MAX_MAX_TOKENS))
    temperature = fields.Float(allow_none=True, validate=between("temperature", 0, 2))
    top_p = fields.Float(allow_none=True, validate=between("top_p", 0, 1))
    stop = fields.Raw(allow_none=True)
    seed = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=0, error="seed must be >= 0"))
    stream = StrictBoolean(load_default=False)

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


class OpenAIGeneration(NullIsDefault, Generation):
    """Parameters OpenAI's chat and completions share, the sampling extensions of vLLM-style servers (``top_k``,
    ``repetition_penalty``), and the accepted-and-ignored standard ones; some are accepted only at their default."""

    n = fields.Integer(allow_none=True, strict=True, validate=between("n", 1, MAX_CHOICES))
    presence_penalty = fields.Float(allow_none=True, validate=between("presence_penalty", -2, 2))
    frequency_penalty = fields.Float(allow_none=True, validate=between("frequency_penalty", -2, 2))
    top_k = fields.Integer(allow_none=True, strict=True, validate=validate.Range(
        -1, 100_000, error="top_k must be between -1 and 100000 (-1 or 0: off)"))
    repetition_penalty = fields.Float(allow_none=True, validate=between("repetition_penalty", 0.01, 10))
    chat_template_kwargs = fields.Dict(keys=fields.String(), allow_none=True)
    logit_bias = fields.Dict(allow_none=True, validate=validate.Length(max=0, error="logit_bias is not supported"))
    stream_options = fields.Dict(allow_none=True)
    # Accepted and ignored: they change nothing this server does.
    user = fields.String(allow_none=True)
    metadata = fields.Dict(keys=fields.String(), allow_none=True)
    store = StrictBoolean(allow_none=True)
    service_tier = fields.String(allow_none=True, validate=validate.OneOf(
        SERVICE_TIERS, error=f"service_tier must be one of {', '.join(SERVICE_TIERS)}"))

    @validates_schema
    def _n(self, data, **kwargs):
        if data.get("n", 1) > 1 and data.get("stream"):
            raise ValidationError("n > 1 cannot stream; send n: 1 with stream: true, or stream: false", "n")

    @validates_schema
    def _stream_options(self, data, **kwargs):
        if "stream_options" in data and not data.get("stream"):  # OpenAI's rule and message
            raise ValidationError("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                                  "stream_options")


def _no_tools():
    raise ValidationError("tool_calls and function_call are not supported: this server calls no tools")


class Message(CompatSchema):
    """One chat message; ``content`` a string or a list of text parts. An assistant message as the official client
    returns it (``refusal``, ``annotations``, ``audio``, ``function_call``, ``tool_calls``, null or empty) can be
    sent back as it is; they are dropped."""

    role = fields.String(required=True, error_messages=required_messages("role"),
                         validate=validate.OneOf(CHAT_ROLES, error="role must be one of system, developer, user, "
                                                                   "assistant"))
    content = fields.Raw(required=True, allow_none=True, error_messages=required_messages("content"))
    name = fields.String(allow_none=True)
    refusal = fields.String(allow_none=True)
    annotations = fields.List(fields.Dict(), allow_none=True)
    audio = fields.Raw(allow_none=True)  # a reference to audio this server never makes
    function_call = fields.Raw(allow_none=True, validate=lambda v: v is None or _no_tools())
    tool_calls = fields.List(fields.Dict(), allow_none=True, validate=lambda v: not v or _no_tools())

    @validates_schema
    def _content(self, data, **kwargs):
        if data["role"] == "assistant" and data.get("content") is None:  # a reply that was a refusal
            data["content"] = data.get("refusal") or ""
        data["content"] = text_content(data.get("content"))
        data["role"] = "system" if data["role"] == "developer" else data["role"]
        for name in ("refusal", "annotations", "audio", "function_call", "tool_calls"):
            data.pop(name, None)


class ChatRequest(OpenAIGeneration):
    """``POST /v1/chat/completions``."""

    messages = fields.List(fields.Nested(Message), required=True, error_messages=required_messages("messages"),
                           validate=validate.Length(min=1, error="messages must not be empty"))
    max_completion_tokens = fields.Integer(allow_none=True, strict=True,
                                           validate=between("max_completion_tokens", 1, MAX_MAX_TOKENS))
    logprobs = StrictBoolean(allow_none=True)
    top_logprobs = fields.Integer(allow_none=True, strict=True,
                                  validate=between("top_logprobs", 0, MAX_TOP_LOGPROBS))
    response_format = fields.Dict(allow_none=True)
    # Accepted and ignored: without ``tools`` (refused) no tool is ever called.
    parallel_tool_calls = StrictBoolean(allow_none=True)

    @validates_schema
    def _top_logprobs(self, data, **kwargs):
        check_top_logprobs(data)

    @validates_schema
    def _format(self, data, **kwargs):
        if (data.get("response_format") or {"type": "text"}).get("type") != "text":
            raise ValidationError("only response_format {\"type\": \"text\"} is supported", "response_format")


class CompletionRequest(OpenAIGeneration):
    """``POST /v1/completions``: ``prompt`` one string or a list of them."""

    prompt = fields.Raw(required=True, error_messages=required_messages("prompt"))
    echo = fields.Boolean(allow_none=True, validate=validate.Equal(False, error="echo is not supported"))
    suffix = fields.String(allow_none=True, validate=validate.Length(max=0, error="suffix is not supported"))
    best_of = fields.Integer(allow_none=True, strict=True)
    # The legacy form: the number of most likely alternatives per token (0: the chosen tokens only).
    logprobs = fields.Integer(allow_none=True, strict=True, validate=between("logprobs", 0, MAX_LEGACY_LOGPROBS))

    @validates_schema
    def _prompt(self, data, **kwargs):
        prompt = data.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValidationError("prompt must be a string or a non-empty list of strings (token arrays are not "
                                  "supported)", "prompt")
        if len(prompts) > MAX_PROMPTS:
            raise ValidationError(f"at most {MAX_PROMPTS} prompts per request", "prompt")
        if len(prompts) * data.get("n", 1) > MAX_CHOICES:
            raise ValidationError(f"n times the number of prompts must be at most {MAX_CHOICES}", "n")
        data["prompt"] = prompts

    @validates_schema
    def _best_of(self, data, **kwargs):
        # best_of > n would generate candidates and return the n of highest mean log probability, which is not
        # done here; best_of == n is n.
        if data.get("best_of") is not None and data["best_of"] != data.get("n", 1):
            raise ValidationError("best_of must equal n (ranking candidates by log probability is not supported)",
                                  "best_of")

    @validates_schema
    def _template(self, data, **kwargs):
        if data.get("chat_template_kwargs"):
            raise ValidationError("chat_template_kwargs applies to chat messages; a completion prompt goes to the "
                                  "model as it is, through no chat template", "chat_template_kwargs")


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
                                  "supported (LangChain's OpenAIEmbeddings sends them unless "
                                  "check_embedding_ctx_length=False)", "input")
        if not text.strip():
            raise ValidationError(f"input is required{where}", "input")
        if len(text) > MAX_EMBEDDING_CHARS:
            raise ValidationError(f"input length must not exceed {MAX_EMBEDDING_CHARS} characters{where}; it has "
                                  f"{len(text)}", "input")
    return texts


class EmbeddingRequest(NullIsDefault):
    """``POST /v1/embeddings`` and the seeds' ``POST /embeddings``."""

    model = fields.String(required=True, error_messages=required_messages("model"),
                          validate=validate.Length(min=1, error="model is required"))
    input = fields.Raw(required=True, error_messages=required_messages("input"))
    encoding_format = fields.String(load_default="float", validate=validate.OneOf(
        ENCODING_FORMATS, error="encoding_format must be float or base64"))
    dimensions = fields.Integer(allow_none=True, strict=True, validate=validate.Range(
        min=1, error="dimensions must be >= 1"))
    user = fields.String(allow_none=True)

    @validates_schema
    def _input(self, data, **kwargs):
        data["input"] = check_embedding_input(data.get("input"))


# The schema of each endpoint's body.
REQUESTS: dict[str, type[Schema]] = {
    "/v1/chat/completions": ChatRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
}


def sampling(data: dict) -> dict:
    """The job input's sampling parameters from a loaded chat or completions body."""
    out = {}
    max_tokens = data.get("max_completion_tokens") or data.get("max_tokens")
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    for name in ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
                 "repetition_penalty"):
        if data.get(name) is not None:
            out[name] = data[name]
    if data.get("n", 1) > 1:
        out["n"] = data["n"]
    if data.get("top_k") is not None:
        out["top_k"] = max(0, data["top_k"])  # vLLM's -1 and the native 0 both mean "off"
    if data.get("chat_template_kwargs"):
        out["chat_template_kwargs"] = data["chat_template_kwargs"]
    out.update(logprob_params(data))
    return out


def logprob_params(data: dict) -> dict:
    """The job input's ``logprobs`` and ``top_logprobs`` from a loaded body: chat's ``logprobs`` is a flag beside
    ``top_logprobs``, the legacy completions' ``logprobs`` the number of alternatives itself (0 included)."""
    wanted = data.get("logprobs")
    if wanted is None or wanted is False:
        return {}
    if wanted is True:  # chat (marshmallow's Integer never loads a bool)
        return {"logprobs": True, "top_logprobs": data.get("top_logprobs") or 0}
    return {"logprobs": True, "top_logprobs": wanted}


def job_input(job_type: JobType, data: dict) -> dict:
    """The job input of a loaded body. A completion body with several prompts is one input whose ``prompt`` is
    the list (a batch line); the synchronous endpoint runs one job per prompt instead."""
    if job_type is JobType.EMBEDDING:
        out = {"input": data["input"]}
        if data.get("dimensions") is not None:
            out["dimensions"] = data["dimensions"]
        if data.get("encoding_format") == "base64":  # the worker encodes: a smaller result, stored and sent
            out["encoding_format"] = "base64"
        return out
    if job_type is JobType.CHAT:
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in data["messages"]],
                **sampling(data)}
    prompts = data["prompt"]
    return {"prompt": prompts[0] if len(prompts) == 1 else prompts, **sampling(data)}


def error_fields(messages, prefix: str = ""):
    """``(field, message)`` for each of marshmallow's error messages, the field dotted (OpenAI's ``param``; ``""``
    for an error of the whole request)."""
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = prefix if key == "_schema" else (f"{prefix}.{key}" if prefix else str(key))
            yield from error_fields(value, name)
    elif isinstance(messages, list):
        for message in messages:
            yield from error_fields(message, prefix)
    else:
        yield prefix, str(messages)

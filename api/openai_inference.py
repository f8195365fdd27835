"""The OpenAI-compatible inference surface: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` and
``/v1/models``, in OpenAI's request, response, streaming and error shapes (see docs/openai.md). Chat and completions
also answer without the version, at ``/chat/completions`` and ``/completions`` (shared/seeds/002).

Every call is a high-priority job on the model's queues (``api/sync_jobs.py``); ``model`` is a repository model
name. The response ``id`` is the job id, so a call that answered 504 can be read later at ``GET /jobs/<id>``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from flask import Blueprint, jsonify

from api.body import json_body
from api.compat_schemas import load_request
from api.jobs import check_context
from api.openai_errors import init_blueprint, openai_error_body
from api.openai_results import LegacyLogprobs, chat_choice, chat_logprobs, choices_of, completion_choice
from api.request_context import services, tenant
from api.sync_jobs import (KEEPALIVE, find_model, job_error, result_of, sse, sse_response, started_tokens,
                           submit_now, wait)
from inferno_jobs.errors import Conflict, InvalidRequest, JobNotFound
from inferno_jobs.job import Job, JobStatus, JobType
from inferno_jobs.openai_request import ChatRequest, CompletionRequest, EmbeddingRequest, job_input, sampling
from inferno_jobs.vectors import to_base64

# No url_prefix: chat and completions have a second, unversioned rule.
bp = Blueprint("openai_inference", __name__)
init_blueprint(bp)

OWNED_BY = "inferno-jobs"


@bp.after_request
def _no_retry_on_timeout(response):
    # The official client retries 5xx; a 504 from a synchronous wait leaves the job running, so a retry would
    # only start the same work again. The client honours x-should-retry.
    if response.status_code == 504:
        response.headers["x-should-retry"] = "false"
    return response


def _model(name: str, job_type: JobType):
    """The model ``name`` serving ``job_type``. A model of the wrong type is a bad ``model`` here: an OpenAI
    request names no job type."""
    try:
        return find_model(name, job_type)
    except InvalidRequest as exc:
        raise InvalidRequest(exc.message, details={**(exc.details or {}), "field": "model"}) from None


def _generation_model(name: str, job_type: JobType, max_tokens: int | None):
    model = _model(name, job_type)
    check_context(model, max_tokens)
    return model


def _include_usage(data: dict) -> bool:
    return bool((data.get("stream_options") or {}).get("include_usage"))


# -- chat --------------------------------------------------------------------------------------------------------

@bp.post("/v1/chat/completions")
@bp.post("/chat/completions")
def chat_completions():
    """A chat completion (``n`` choices); ``stream: true`` answers ``chat.completion.chunk`` events ending in
    ``[DONE]``."""
    owner = tenant()
    data = load_request(ChatRequest(), json_body())
    chat = job_input(JobType.CHAT, data)
    model = _generation_model(data["model"], JobType.CHAT, chat.get("max_tokens"))
    job = submit_now({"type": JobType.CHAT, "model": model.name, "input": chat}, owner, stream=data["stream"])
    if data["stream"]:
        return sse_response(_chat_chunks(job, started_tokens(job), _include_usage(data)), job.id)
    (job,) = wait([job])
    result = result_of(job)
    return _json(job, {
        "id": job.id, "object": "chat.completion", "created": int(job.created_at), "model": job.model,
        "choices": [chat_choice(c) for c in choices_of(result)], "usage": result["usage"],
        "system_fingerprint": None,
    })


def _chat_chunks(job: Job, tokens, include_usage: bool):
    def chunk(delta: dict, finish_reason=None, logprobs=None) -> dict:
        return {"id": job.id, "object": "chat.completion.chunk", "created": int(job.created_at), "model": job.model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}

    yield sse(chunk({"role": "assistant", "content": ""}))
    for kind, value in tokens:
        if kind == "token":
            # With logprobs asked, each piece carries the entries of the tokens it completes (maybe none).
            yield sse(chunk({"content": value["token"]}, logprobs=chat_logprobs(value.get("logprobs"))))
        elif kind == "keepalive":
            yield KEEPALIVE
        elif kind == "end":
            yield from _stream_end(value, lambda result: chunk({}, result["finish_reason"]), include_usage)
        else:
            yield from _error_end(value)


def _stream_end(job: Job, final_chunk, include_usage: bool):
    if job.status is JobStatus.SUCCEEDED:
        yield sse(final_chunk(job.result))
        if include_usage:
            last = final_chunk(job.result)
            yield sse({**last, "choices": [], "usage": job.result["usage"]})
        yield sse("[DONE]")
    elif job.status is JobStatus.CANCELED:
        yield sse(final_chunk({"finish_reason": "canceled"}))
        yield sse("[DONE]")
    else:
        yield from _error_end(job_error(job))


def _error_end(exc) -> Iterator[str]:
    """A stream's error event, then ``[DONE]``: every stream ends in it (the official client has raised by then)."""
    yield sse(openai_error_body(exc))
    yield sse("[DONE]")


# -- completions -------------------------------------------------------------------------------------------------

@bp.post("/v1/completions")
@bp.post("/completions")
def completions():
    """``n`` text completions per prompt (one job each prompt); ``stream: true`` (one prompt, ``n`` 1) answers
    ``text_completion`` events ending in ``[DONE]``."""
    owner = tenant()
    data = load_request(CompletionRequest(), json_body())
    params = sampling(data)
    model = _generation_model(data["model"], JobType.COMPLETION, params.get("max_tokens"))
    prompts = data["prompt"]
    if data["stream"] and len(prompts) > 1:
        raise InvalidRequest("stream: true takes one prompt", details={"field": "prompt"})
    jobs = []
    try:
        for prompt in prompts:
            jobs.append(submit_now({"type": JobType.COMPLETION, "model": model.name,
                                    "input": {"prompt": prompt, **params}}, owner, stream=data["stream"]))
    except Exception:
        _cancel(jobs)  # all or nothing: the prompts already queued would run for nobody
        raise
    if data["stream"]:
        return sse_response(_completion_chunks(jobs[0], started_tokens(jobs[0]), _include_usage(data)), jobs[0].id)
    jobs = wait(jobs)
    results = [result_of(job) for job in jobs]
    usage = {key: sum(r["usage"][key] for r in results) for key in ("prompt_tokens", "completion_tokens",
                                                                    "total_tokens")}
    # Prompt i's choice j is choice i * n + j, as OpenAI numbers them.
    choices = [(choice, len(prompt)) for prompt, result in zip(prompts, results) for choice in choices_of(result)]
    return _json(jobs[0], {
        "id": jobs[0].id, "object": "text_completion", "created": int(jobs[0].created_at), "model": model.name,
        "choices": [completion_choice(c, index=i, prompt_chars=chars) for i, (c, chars) in enumerate(choices)],
        "usage": usage, "system_fingerprint": None,
    }, job_ids=[job.id for job in jobs])


def _completion_chunks(job: Job, tokens, include_usage: bool):
    def chunk(text: str, finish_reason=None, logprobs=None) -> dict:
        return {"id": job.id, "object": "text_completion", "created": int(job.created_at), "model": job.model,
                "system_fingerprint": None,
                "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}]}

    legacy = LegacyLogprobs(len(job.input["prompt"]))  # text_offset counts across the chunks, from the prompt's start
    for kind, value in tokens:
        if kind == "token":
            entries = value.get("logprobs")
            logprobs = None if entries is None else legacy.add(value["token"], entries)
            yield sse(chunk(value["token"], logprobs=logprobs))
        elif kind == "keepalive":
            yield KEEPALIVE
        elif kind == "end":
            yield from _stream_end(value, lambda result: chunk("", result["finish_reason"]), include_usage)
        else:
            yield from _error_end(value)


def _cancel(jobs: list[Job]) -> None:
    store = services().store
    for job in jobs:
        with contextlib.suppress(Conflict, JobNotFound):
            store.cancel(job.id)


# -- embeddings --------------------------------------------------------------------------------------------------

@bp.post("/v1/embeddings")
def embeddings():
    """Embeddings of one string or a list of strings; ``encoding_format`` ``float`` or ``base64`` (the
    official client asks for base64 and decodes it)."""
    owner = tenant()
    data = load_request(EmbeddingRequest(), json_body())
    model = _model(data["model"], JobType.EMBEDDING)
    dim = model.options.get("dim")
    if data.get("dimensions") is not None and data["dimensions"] != dim:
        raise InvalidRequest(f"dimensions must be the model's own ({dim}); other sizes are not supported",
                             details={"field": "dimensions"})
    job = submit_now({"type": JobType.EMBEDDING, "model": model.name, "input": job_input(JobType.EMBEDDING, data)},
                     owner)
    (job,) = wait([job])
    result = result_of(job)
    return _json(job, {
        "object": "list", "model": job.model,
        "data": [{"object": "embedding", "index": i, "embedding": encode_embedding(v, data["encoding_format"])}
                 for i, v in enumerate(result["embeddings"])],
        "usage": {"prompt_tokens": result["usage"]["prompt_tokens"], "total_tokens": result["usage"]["total_tokens"]},
    })


def encode_embedding(vector, encoding_format: str):
    """A vector as a list of floats, or as base64 of its little-endian float32 bytes (OpenAI's ``base64``). A job
    that asked the worker for base64 holds the text already (a string passes through)."""
    return to_base64(vector) if encoding_format == "base64" and not isinstance(vector, str) else vector


# -- models ------------------------------------------------------------------------------------------------------

def _model_object(model) -> dict:
    created = int((model.path / "config.json").stat().st_mtime)
    return {"id": model.name, "object": "model", "created": created, "owned_by": OWNED_BY}


@bp.get("/v1/models")
def list_models():
    """The model repository in OpenAI's list shape."""
    tenant()
    return jsonify({"object": "list", "data": [_model_object(m) for m in services().models.all()]})


@bp.get("/v1/models/<model_id>")
def retrieve_model(model_id: str):
    """One model, or 404 ``model_not_found``."""
    tenant()
    return jsonify(_model_object(services().models.get(model_id)))


def _json(job: Job, body: dict, job_ids: list[str] | None = None):
    response = jsonify(body)
    response.headers["X-Job-ID"] = ",".join(job_ids or [job.id])
    response.headers["openai-processing-ms"] = str(int(max(0.0, time.time() - job.created_at) * 1000))
    return response


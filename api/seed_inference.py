"""The seeds' text endpoints (shared/seeds/000): ``POST /inference``, ``POST /inference/stream`` (SSE
``{"token", "index"}`` ... ``{"done": true, "finish_reason"}``) and ``POST /embeddings``.

Each call is a high-priority job that the API waits for (``api/sync_jobs.py``); errors are the native shape.
"""

from __future__ import annotations

import time

from flask import Blueprint, jsonify

from api.body import json_body
from api.compat_schemas import EmbeddingRequest, InferenceRequest, load_request
from api.openai_inference import encode_embedding
from api.request_context import tenant
from api.sync_jobs import (KEEPALIVE, find_model, job_error, result_of, sse, sse_response, stream_tokens, submit_now,
                           wait)
from inferno_jobs.errors import InfernoError
from inferno_jobs.job import Job, JobStatus, JobType

bp = Blueprint("seed_inference", __name__)


def generation_input(data: dict) -> dict:
    """A completion or chat job input from a seed request (``repeat_penalty`` is ``repetition_penalty``)."""
    out = {"prompt": data["prompt"]} if data.get("prompt") else {"messages": data["messages"]}
    for name in ("max_tokens", "temperature", "top_p", "top_k", "stop", "seed"):
        if data.get(name) is not None:
            out[name] = data[name]
    if data.get("repeat_penalty") is not None:
        out["repetition_penalty"] = data["repeat_penalty"]
    return out


def generation_job(data: dict, owner: str, *, stream: bool) -> Job:
    """Check the model and submit the job of a seed generation request (``submit`` checks ``max_tokens``
    against the model's context)."""
    job_type = JobType.CHAT if data.get("messages") else JobType.COMPLETION
    model = find_model(data["model"], job_type)
    return submit_now({"type": job_type, "model": model.name, "input": generation_input(data)}, owner, stream=stream)


@bp.post("/inference")
def inference():
    """Run a prompt and answer ``{id, model, choices: [{text, index, finish_reason}], usage, created,
    processing_time_ms}``; ``stream: true`` answers as ``/inference/stream`` does."""
    owner = tenant()
    data = load_request(InferenceRequest(), json_body())
    if data["stream"]:
        return _stream(data, owner)
    started = time.monotonic()
    (job,) = wait([generation_job(data, owner, stream=False)])
    result = result_of(job)
    return jsonify({
        "id": job.id, "model": job.model,
        "choices": [{"text": result["text"], "index": 0, "finish_reason": result["finish_reason"]}],
        "usage": result["usage"], "created": int(job.created_at),
        "processing_time_ms": round((time.monotonic() - started) * 1000),
    })


@bp.post("/inference/stream")
def inference_stream():
    """Stream a prompt's tokens as SSE: ``data: {"token", "index"}`` per piece, then ``data: {"done": true,
    "finish_reason"}``. A client that disconnects cancels the job."""
    owner = tenant()
    data = load_request(InferenceRequest(), json_body())
    return _stream(data, owner)


def _stream(data: dict, owner: str):
    job = generation_job(data, owner, stream=True)
    return sse_response(token_events(job), job.id)


def token_events(job: Job):
    """The SSE events of a streaming generation job: ``{"token", "index"}`` per piece, then ``{"done": true,
    "finish_reason", "usage", "id"}`` (or ``finish_reason: "error"`` with the error)."""
    for kind, value in stream_tokens(job):
        if kind == "token":
            yield sse(value)
        elif kind == "keepalive":
            yield KEEPALIVE
        elif kind == "end":
            yield sse(_end(value))
        else:
            yield sse(_error(value))


def _end(job: Job) -> dict:
    if job.status is JobStatus.SUCCEEDED:
        return {"done": True, "finish_reason": job.result["finish_reason"], "usage": job.result["usage"],
                "id": job.id}
    if job.status is JobStatus.CANCELED:
        return {"done": True, "finish_reason": "canceled", "id": job.id}
    return _error(job_error(job))


def _error(exc: InfernoError) -> dict:
    return {"done": True, "finish_reason": "error", "error": {"code": exc.code, "message": exc.message,
                                                              "details": exc.details}}


@bp.post("/embeddings")
def embeddings():
    """Embed ``input`` (a string or a list): ``{model, data: [{embedding, index}], usage}``."""
    owner = tenant()
    data = load_request(EmbeddingRequest(), json_body())
    model = find_model(data["model"], JobType.EMBEDDING)
    (job,) = wait([submit_now({"type": JobType.EMBEDDING, "model": model.name, "input": {"input": data["input"]}},
                              owner)])
    result = result_of(job)
    return jsonify({
        "model": job.model, "id": job.id,
        "data": [{"embedding": encode_embedding(v, data["encoding_format"]), "index": i}
                 for i, v in enumerate(result["embeddings"])],
        "usage": {"prompt_tokens": result["usage"]["prompt_tokens"], "total_tokens": result["usage"]["total_tokens"]},
    })

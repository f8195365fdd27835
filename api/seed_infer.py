"""Seed 004's inference endpoints: ``POST /v1/infer`` (synchronous) and ``POST /v1/infer/stream`` (SSE).

``{"model": "tiny-gpt", "prompt": "Hello, world!", "params": {"max_new_tokens": 12, "temperature": 0.7}}`` is a
high-priority completion job that the API waits for, as the seeds' ``POST /inference`` is
(``api/seed_inference.py``); the stream sends the same events as ``/inference/stream``. They live under ``/v1``,
so their errors have OpenAI's shape, as every ``/v1`` route's do (shared/spec/API.md).
"""

from __future__ import annotations

import time

from flask import Blueprint, jsonify
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from api.body import json_body
from api.compat_schemas import CompatSchema, load_request
from api.openai_errors import init_blueprint
from api.request_context import tenant
from api.seed_inference import generation_job, token_events
from api.sync_jobs import result_of, sse_response, wait
from inferno_jobs.schemas import MAX_MAX_TOKENS

bp = Blueprint("seed_infer", __name__, url_prefix="/v1")
init_blueprint(bp)


def _between(name: str, low, high) -> validate.Range:
    return validate.Range(low, high, error=f"{name} must be between {low} and {high}")


class InferParams(CompatSchema):
    """``params``: Hugging Face's generation names; a job's ``max_tokens`` is ``max_new_tokens``."""

    max_new_tokens = fields.Integer(allow_none=True, strict=True,
                                    validate=_between("max_new_tokens", 1, MAX_MAX_TOKENS))
    temperature = fields.Float(allow_none=True, validate=_between("temperature", 0, 2))
    top_p = fields.Float(allow_none=True, validate=_between("top_p", 0, 1))
    top_k = fields.Integer(allow_none=True, strict=True, validate=_between("top_k", 0, 100_000))
    repetition_penalty = fields.Float(allow_none=True, validate=_between("repetition_penalty", 0.01, 10))
    stop = fields.Raw(allow_none=True, metadata={"description": "a string or a list of up to 4"})
    seed = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=0, error="seed must be >= 0"))

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


class InferRequest(CompatSchema):
    """``POST /v1/infer`` and ``/v1/infer/stream``."""

    model = fields.String(required=True, error_messages={"required": "model is required", "null": "model is required"},
                          validate=validate.Length(min=1, error="model is required"))
    prompt = fields.String(required=True, error_messages={"required": "prompt is required",
                                                          "null": "prompt is required"},
                           validate=validate.Length(min=1, error="prompt is required"))
    params = fields.Nested(InferParams, load_default=dict)


class InferResponse(Schema):
    """``POST /v1/infer``: the generated text and what it cost."""

    id = fields.String(metadata={"description": "the job id (GET /jobs/<id>)"})
    object = fields.String()
    model = fields.String()
    output = fields.String()
    finish_reason = fields.String()
    usage = fields.Dict(keys=fields.String(), values=fields.Integer())
    created = fields.Integer()
    latency_ms = fields.Integer(metadata={"description": "from the request to the job's end, waiting included"})


def seed_request(data: dict) -> dict:
    """The request as the seeds' ``POST /inference`` takes it (``api/seed_inference.py``)."""
    params = data["params"]
    out = {"model": data["model"], "prompt": data["prompt"], "max_tokens": params.get("max_new_tokens"),
           "repeat_penalty": params.get("repetition_penalty")}
    for name in ("temperature", "top_p", "top_k", "stop", "seed"):
        out[name] = params.get(name)
    return out


@bp.post("/infer")
def infer():
    """Generate from ``prompt`` and answer once done: ``{id, model, output, finish_reason, usage, created,
    latency_ms}``."""
    owner = tenant()
    data = seed_request(load_request(InferRequest(), json_body()))
    started = time.monotonic()
    (job,) = wait([generation_job(data, owner, stream=False)])
    result = result_of(job)
    return jsonify(InferResponse().dump({
        "id": job.id, "object": "inference", "model": job.model, "output": result["text"],
        "finish_reason": result["finish_reason"], "usage": result["usage"], "created": int(job.created_at),
        "latency_ms": round((time.monotonic() - started) * 1000)}))


@bp.post("/infer/stream")
def infer_stream():
    """Stream the generated pieces as SSE: ``data: {"token", "index"}`` each, then ``data: {"done": true,
    "finish_reason", "usage", "id"}``. A client that disconnects cancels the job."""
    owner = tenant()
    data = seed_request(load_request(InferRequest(), json_body()))
    job = generation_job(data, owner, stream=True)
    return sse_response(token_events(job), job.id)


# Merged into GET /openapi.json by api/openapi.py (see api/feature_importance.py for the tuple's fields).
ROUTES: dict = {
    "/v1/infer": {"post": ("Generate from a prompt synchronously (seed 004's shape)", "InferRequest", 200,
                           "InferResponse", (400, 401, 404, 504))},
    "/v1/infer/stream": {"post": ("Stream a prompt's generated pieces (SSE, seed 004's shape)", "InferRequest",
                                  200, None, (400, 401, 404))},
}
SCHEMAS: dict = {"InferParams": InferParams, "InferRequest": InferRequest, "InferResponse": InferResponse}

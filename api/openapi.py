"""``GET /openapi.json``: the OpenAPI 3 document, built with apispec from the marshmallow schemas."""

from __future__ import annotations

import re
from http import HTTPStatus

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, current_app, jsonify

from inferno_jobs import __version__
from api.batches import SCHEMAS as batch_schemas
from api.controls import SCHEMAS as control_schemas
from api.deliveries import SCHEMAS as delivery_schemas
from api.ratelimit import rate_limited
from api.versioning import deprecation_of
from inferno_jobs import schemas

# Blueprints that describe their own routes and schemas (ROUTES, SCHEMAS), merged into the document.
SELF_DESCRIBED = ("auth", "cache", "feature_importance", "ingest", "runtime_config", "seed_info", "seed_infer",
                  "seed_models", "seed_services", "traces")

bp = Blueprint("openapi", __name__)

ERROR = {"description": "Error", "content": {"application/json": {"schema": "ErrorResponse"}}}

# path -> method -> (summary, request schema or None, success status, response schema, error statuses)
ROUTES = {
    "/jobs": {
        "post": ("Submit a job", "JobRequest", 202, "JobResponse", (400, 401, 404, 409, 413)),
        "get": ("List jobs", None, 200, "JobList", (400, 401)),
    },
    "/jobs/{job_id}": {"get": ("Get a job", None, 200, "JobResponse", (401, 404))},
    "/jobs/{job_id}/cancel": {"post": ("Cancel a job", None, 200, "JobResponse", (401, 404, 409))},
    "/jobs/{job_id}/deliveries": {"get": ("A job's webhook delivery attempts", None, 200, "DeliveryList", (401, 404))},
    "/jobs/{job_id}/deliveries/{n}/replay": {
        "post": ("Send a delivery attempt's event again (same webhook-id)", None, 202, "ReplayResponse",
                 (401, 404, 409)),
    },
    "/models": {"get": ("List models", None, 200, "ModelList", (401,))},
    "/models/{model_id}/load": {"post": ("Load a model on every worker (admin key)", None, 200, "ModelResponse",
                                         (401, 403, 404))},
    "/models/{model_id}/unload": {"post": ("Unload a model everywhere (admin key)", None, 200, "ModelResponse",
                                           (401, 403, 404))},
    "/models/{model_id}/validate": {"post": ("Validate a model in a worker", None, 200, "ModelValidation",
                                             (401, 404, 504))},
    "/models/{model_id}/circuit/reset": {"post": ("Close a model's circuit breaker (admin key)", None, 200,
                                                  "ModelResponse", (401, 403, 404))},
    "/batches": {
        "post": ("Submit a batch: multipart file=@prompts.jsonl (+model, type, params, priority, webhook_url) or "
                 "JSON requests; ?dry_run=true validates only", "BatchRequest", 202, "BatchResponse",
                 (400, 401, 404, 413)),
        "get": ("List batches", None, 200, "BatchList", (400, 401)),
    },
    "/batches/{batch_id}": {"get": ("Get a batch", None, 200, "BatchResponse", (401, 404))},
    "/batches/{batch_id}/cancel": {"post": ("Cancel a batch", None, 200, "BatchResponse", (401, 404, 409))},
    "/batches/{batch_id}/results": {"get": ("A batch's results, JSONL in input order", None, 200, None, (401, 404))},
    "/batches/{batch_id}/errors": {"get": ("A batch's failed lines, JSONL", None, 200, None, (401, 404))},
    "/batches/{batch_id}/retry": {"post": ("A new batch of the failed lines", None, 202, "BatchResponse",
                                           (401, 404, 409))},
    "/batches/{batch_id}/deliveries": {"get": ("A batch's webhook delivery attempts", None, 200, "DeliveryList",
                                               (401, 404))},
    "/batches/{batch_id}/deliveries/{n}/replay": {
        "post": ("Send a delivery attempt's event again (same webhook-id)", None, 202, "ReplayResponse",
                 (401, 404, 409)),
    },
    "/batch": {"post": ("Submit a batch (the seeds' shape)", "BatchRequest", 202, "SeedBatchResponse",
                        (400, 401, 404, 413))},
    "/batch/{batch_id}": {"get": ("A batch's status (the seeds' shape)", None, 200, "SeedBatchStatus", (401, 404))},
    "/batch/{batch_id}/results": {"get": ("A batch's results as JSONL, as /batches/{batch_id}/results (the seeds' "
                                          "path)", None, 200, None, (401, 404))},
    "/v1/files": {"post": ("Upload a file (OpenAI; multipart file + purpose=batch)", None, 200, None,
                           (400, 401, 413)),
                  "get": ("List uploaded files, newest first (OpenAI; limit, after, purpose, order)", None, 200, None,
                          (400, 401))},
    "/v1/files/{file_id}": {"get": ("A file object (OpenAI)", None, 200, None, (401, 404)),
                            "delete": ("Delete a file (OpenAI)", None, 200, None, (401, 404))},
    "/v1/files/{file_id}/content": {"get": ("A file's content (OpenAI)", None, 200, None, (401, 404))},
    "/v1/batches": {"post": ("Create a batch (OpenAI)", None, 200, None, (400, 401, 404)),
                    "get": ("List batches (OpenAI)", None, 200, None, (401,))},
    "/v1/batches/{batch_id}": {"get": ("Get a batch (OpenAI)", None, 200, None, (401, 404))},
    "/v1/batches/{batch_id}/cancel": {"post": ("Cancel a batch (OpenAI)", None, 200, None, (401, 404, 409))},
    "/jobs/{job_id}/events": {"get": ("A job's status changes and tokens (SSE)", None, 200, None, (401, 404))},
    "/v1/chat/completions": {"post": ("Chat completion (OpenAI; stream: true answers SSE)", None, 200, None,
                                      (400, 401, 404, 504))},
    "/v1/completions": {"post": ("Text completion (OpenAI; stream: true answers SSE)", None, 200, None,
                                 (400, 401, 404, 504))},
    "/chat/completions": {"post": ("Chat completion, as /v1/chat/completions (the seeds' unversioned path)", None,
                                   200, None, (400, 401, 404, 504))},
    "/completions": {"post": ("Text completion, as /v1/completions (the seeds' unversioned path)", None, 200, None,
                              (400, 401, 404, 504))},
    "/v1/embeddings": {"post": ("Embeddings (OpenAI)", None, 200, None, (400, 401, 404, 504))},
    "/v1/models": {"get": ("List models (OpenAI)", None, 200, None, (401,))},
    "/v1/models/{model_id}": {"get": ("Get a model (OpenAI)", None, 200, None, (401, 404))},
    "/inference": {"post": ("Run a prompt synchronously (the seeds' shape)", None, 200, None, (400, 401, 404, 504))},
    "/inference/stream": {"post": ("Stream a prompt's tokens (SSE, the seeds' shape)", None, 200, None,
                                   (400, 401, 404))},
    "/embeddings": {"post": ("Embeddings (the seeds' shape)", None, 200, None, (400, 401, 404, 504))},
    "/predict": {"post": ("Predict synchronously (the seeds' shape)", None, 200, None, (400, 401, 404, 504))},
    "/predict/batch": {"post": ("Predict a batch of feature arrays (the seeds' shape)", None, 200, None,
                                (400, 401, 404, 504))},
    "/predict/async": {"post": ("Queue a prediction (the seeds' shape)", None, 202, None, (400, 401, 404))},
    "/jobs/{job_id}/retry": {"post": ("Run a failed, expired or timed-out job again (same id)", None, 202,
                                      "JobResponse", (401, 404, 409, 429, 503))},
    "/queues": {"get": ("Queues: depth, oldest job age, consumers, paused", None, 200, "QueueList", (401,))},
    "/queues/{name}/pause": {"post": ("Pause a queue (admin key)", None, 200, "QueueAction", (401, 403, 404))},
    "/queues/{name}/resume": {"post": ("Resume a queue (admin key)", None, 200, "QueueAction", (401, 403, 404))},
    "/queues/{name}/purge": {"post": ("Cancel every queued job of a queue (admin key)", None, 200, "QueueAction",
                                      (401, 403, 404))},
    "/workers": {"get": ("Worker nodes: pool, models, healthy, jobs done, errors, mean run time", None, 200,
                         "WorkerList", (401,))},
    "/metrics": {"get": ("Prometheus metrics (text exposition)", None, 200, None, ())},
    "/metrics/custom": {"post": ("Record a custom metric sample, exposed on /metrics as inferno_custom_<name>",
                                 "CustomMetricRequest", 200, "CustomMetricSample", (400, 401, 409))},
    "/health": {"get": ("Health", None, 200, "HealthResponse", ())},
    "/ready": {"get": ("Readiness", None, 200, "HealthResponse", (503,))},
    "/livez": {"get": ("Liveness: 200 while the process serves; reads nothing, not even Redis", None, 200, None, ())},
    "/openapi.json": {"get": ("This OpenAPI document", None, 200, None, ())},
    "/ws": {"get": ("WebSocket upgrade: the seeds' streaming protocol; the key comes in the handshake or an auth "
                    "message (docs/seeds.md)", None, 101, None, (400,))},
}


# Routes that take no API key or token.
UNAUTHENTICATED = ("/", "/health", "/ready", "/livez", "/metrics", "/auth/login", "/openapi.json")

# What every rate-limited route (the ones that submit work) may also answer: 429 (rate limits, throttling) and 503
# (queues full, circuit open).
SUBMIT_ERRORS = (429, 503)


def all_routes() -> dict:
    """``ROUTES`` and the routes of every self-described blueprint."""
    import importlib

    routes = dict(ROUTES)
    for name in SELF_DESCRIBED:
        # Merged per method: a blueprint may add a method to another's path (seed 001's DELETE /models).
        for path, methods in importlib.import_module(f"api.{name}").ROUTES.items():
            routes[path] = {**routes.get(path, {}), **methods}
    return routes


def _deprecated_operations() -> set[tuple[str, str]]:
    """``(path, method)`` of every route marked with ``api.versioning.deprecated``, in the document's path form."""
    out = set()
    for rule in current_app.url_map.iter_rules():
        if deprecation_of(rule.endpoint) is not None:
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
            out.update((path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"})
    return out


def build_spec() -> dict:
    """The OpenAPI document as a dict."""
    import importlib

    spec = APISpec(title="inferno-jobs", version=__version__, openapi_version="3.0.3",
                   plugins=[MarshmallowPlugin()],
                   info={"description": "Queue-driven asynchronous inference jobs. See docs/api.md."})
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("apiKey", {"type": "apiKey", "in": "header", "name": "X-API-Key"})
    for name in ("JobRequest", "JobResponse", "JobList", "ErrorResponse", "ModelResponse", "ModelList",
                 "ModelValidation", "HealthResponse"):
        spec.components.schema(name, schema=getattr(schemas, name))
    described = {}
    for module in SELF_DESCRIBED:
        described.update(importlib.import_module(f"api.{module}").SCHEMAS)
    for name, schema in {**delivery_schemas, **batch_schemas, **control_schemas, **described}.items():
        spec.components.schema(name, schema=schema)
    deprecated = _deprecated_operations()
    for path, methods in all_routes().items():
        operations = {}
        for method, (summary, body, status, response, errors) in methods.items():
            if rate_limited(method.upper(), path):
                errors = tuple(sorted(set(errors) | set(SUBMIT_ERRORS)))
            op = {"summary": summary,
                  "responses": {str(status): {"description": HTTPStatus(status).phrase, **(
                                    {"content": {"application/json": {"schema": response}}} if response else {})},
                                **{str(code): ERROR for code in errors}}}
            if body:
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
            params = re.findall(r"{(\w+)}", path)
            if params:
                op["parameters"] = [{"name": p, "in": "path", "required": True,
                                     "schema": {"type": "integer" if p == "n" else "string"}} for p in params]
            if path not in UNAUTHENTICATED and not path.startswith("/webhooks/ingest"):  # ingest: signed instead
                op["security"] = [{"bearer": []}, {"apiKey": []}]
            if (path, method) in deprecated:
                op["deprecated"] = True
            operations[method] = op
        spec.path(path=path, operations=operations)
    return spec.to_dict()


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI document."""
    return jsonify(build_spec())

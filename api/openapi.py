"""``GET /openapi.json``: the OpenAPI 3 document, built with apispec from the marshmallow schemas."""

from __future__ import annotations

import re

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, jsonify

from inferno_jobs import __version__
from api.deliveries import SCHEMAS as delivery_schemas
from inferno_jobs import schemas

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
    "/models/{model_id}/load": {"post": ("Load a model on every worker", None, 200, "ModelResponse", (401, 404))},
    "/models/{model_id}/unload": {"post": ("Unload a model everywhere", None, 200, "ModelResponse", (401, 404))},
    "/models/{model_id}/validate": {"post": ("Validate a model in a worker", None, 200, "ModelValidation",
                                             (401, 404, 504))},
    "/health": {"get": ("Health", None, 200, "HealthResponse", ())},
    "/ready": {"get": ("Readiness", None, 200, "HealthResponse", (503,))},
}


def build_spec() -> dict:
    """The OpenAPI document as a dict."""
    spec = APISpec(title="inferno-jobs", version=__version__, openapi_version="3.0.3",
                   plugins=[MarshmallowPlugin()],
                   info={"description": "Queue-driven asynchronous inference jobs. See docs/api.md."})
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("apiKey", {"type": "apiKey", "in": "header", "name": "X-API-Key"})
    for name in ("JobRequest", "JobResponse", "JobList", "ErrorResponse", "ModelResponse", "ModelList",
                 "ModelValidation", "HealthResponse"):
        spec.components.schema(name, schema=getattr(schemas, name))
    for name, schema in delivery_schemas.items():
        spec.components.schema(name, schema=schema)
    for path, methods in ROUTES.items():
        operations = {}
        for method, (summary, body, status, response, errors) in methods.items():
            op = {"summary": summary,
                  "responses": {str(status): {"description": "OK", **(
                                    {"content": {"application/json": {"schema": response}}} if response else {})},
                                **{str(code): ERROR for code in errors}}}
            if body:
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
            params = re.findall(r"{(\w+)}", path)
            if params:
                op["parameters"] = [{"name": p, "in": "path", "required": True,
                                     "schema": {"type": "integer" if p == "n" else "string"}} for p in params]
            if path not in ("/health", "/ready"):
                op["security"] = [{"bearer": []}, {"apiKey": []}]
            operations[method] = op
        spec.path(path=path, operations=operations)
    return spec.to_dict()


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI document."""
    return jsonify(build_spec())

"""``GET /``: what this API is (seed 001's "basic information about the API"; seed 004's "API information").

Seed 001's fields (``name``, ``version``, ``description``, ``status``, ``docs_url``) with the API version and the
probe paths beside them. It needs no key, like ``/health``, and tells no more than ``/health`` does.
"""

from __future__ import annotations

from flask import Blueprint, jsonify
from marshmallow import Schema, fields

from api.versioning import API_VERSION
from inferno_jobs import __version__

bp = Blueprint("seed_info", __name__)

DESCRIPTION = ("Self-hosted, queue-driven asynchronous inference jobs: a Flask API, Redis, Celery workers running "
               "ONNX Runtime")


class ApiInfo(Schema):
    """``GET /``."""

    name = fields.String()
    version = fields.String(metadata={"description": "the inferno-jobs release"})
    description = fields.String()
    status = fields.String(metadata={"description": "always running while the API answers; GET /health tells "
                                                    "whether Redis and the workers are"})
    docs_url = fields.String(metadata={"description": "the OpenAPI document of every route"})
    api_version = fields.String(metadata={"description": "the API-Version header's value"})
    health_url = fields.String()
    ready_url = fields.String()


@bp.get("/")
def info():
    """The API's name, release and where its documentation is."""
    return jsonify(ApiInfo().dump({
        "name": "inferno-jobs", "version": __version__, "description": DESCRIPTION, "status": "running",
        "docs_url": "/openapi.json", "api_version": API_VERSION, "health_url": "/health", "ready_url": "/ready"}))


# Merged into GET /openapi.json by api/openapi.py (see api/feature_importance.py for the tuple's fields).
ROUTES: dict = {"/": {"get": ("What this API is: name, version, documentation (the seeds' shape)", None, 200,
                              "ApiInfo", ())}}
SCHEMAS: dict = {"ApiInfo": ApiInfo}

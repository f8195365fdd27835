"""``/models``: the model repository, with ``loaded`` as the worker processes report it."""

from __future__ import annotations

import json

from flask import Blueprint, jsonify

from api.request_context import services, tenant
from inferno_jobs.job import now
from inferno_jobs.schemas import ModelList

bp = Blueprint("models", __name__)


def loaded_models() -> set[str]:
    """Models that some worker process reported loaded within the last few lease periods."""
    svc = services()
    horizon = now() - 3 * svc.settings.lease_s
    reports = [json.loads(v) for v in svc.redis.hgetall(svc.store.keys.loaded_models()).values()]
    return {m for r in reports if r.get("reported_at", 0) >= horizon for m in r.get("models", [])}


@bp.get("/models")
def list_models():
    """Every model in ``MODEL_DIR`` with its type, device, size, batch size and whether a worker has it loaded."""
    tenant()
    loaded = loaded_models()
    models = [dict(m.describe(), loaded=m.name in loaded) for m in services().models.all()]
    return jsonify(ModelList().dump({"models": models}))

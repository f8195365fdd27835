"""``/models``: the model repository, with ``loaded`` as the worker processes report it, and load / unload /
validate commands that reach every worker process serving the model."""

from __future__ import annotations

import json
import time

from flask import Blueprint, jsonify

from api.request_context import services, tenant
from inferno_jobs.errors import Timeout
from inferno_jobs.job import new_id, now
from inferno_jobs.queue import queue_name
from inferno_jobs.schemas import ModelList, ModelResponse
from workers.celery_app import VALIDATE_MODEL
from workers.model_watch import request_command

bp = Blueprint("models", __name__)

COMMAND_WAIT_S = 10
VALIDATE_WAIT_S = 60


def loaded_models() -> set[str]:
    """Models that some worker process reported loaded within the last few lease periods."""
    svc = services()
    horizon = now() - 3 * svc.settings.lease_s
    reports = [json.loads(v) for v in svc.redis.hgetall(svc.store.keys.loaded_models()).values()]
    return {m for r in reports if r.get("reported_at", 0) >= horizon for m in r.get("models", [])}


def describe(model) -> dict:
    """The model as ``GET /models`` shows it."""
    return ModelResponse().dump(dict(model.describe(), loaded=model.name in loaded_models()))


@bp.get("/models")
def list_models():
    """Every model in ``MODEL_DIR`` with its type, device, size, batch size and whether a worker has it loaded."""
    tenant()
    loaded = loaded_models()
    models = [dict(m.describe(), loaded=m.name in loaded) for m in services().models.all()]
    return jsonify(ModelList().dump({"models": models}))


def _command(model_id: str, action: str):
    tenant()
    model = services().models.get(model_id)
    request_command(services().store, model.name, action)
    want = action == "load"
    deadline = time.monotonic() + COMMAND_WAIT_S
    while (model.name in loaded_models()) != want and time.monotonic() < deadline:
        time.sleep(0.2)
    body = describe(model)
    # 200 once the workers report the new state; 202 while it is still being applied.
    return jsonify(body), (200 if body["loaded"] == want else 202)


@bp.post("/models/<model_id>/load")
def load_model(model_id: str):
    """Ask every worker process of the model's pool to load it now and keep it loaded."""
    return _command(model_id, "load")


@bp.post("/models/<model_id>/unload")
def unload_model(model_id: str):
    """Ask every worker process to drop the model (a later job loads it again on demand)."""
    return _command(model_id, "unload")


@bp.post("/models/<model_id>/validate")
def validate_model(model_id: str):
    """Load the model afresh in a worker and run a sample through it: ``{valid, latency_ms, error?}``.

    504 ``TIMEOUT`` when no worker of the model's pool answers within a minute.
    """
    tenant()
    svc = services()
    model = svc.models.get(model_id)
    reply_key = svc.store.keys.model_validation(new_id("val"))
    svc.celery.send_task(VALIDATE_MODEL, args=[model.name, reply_key], queue=queue_name(model.pool, "high"))
    reply = svc.redis.blpop([reply_key], timeout=VALIDATE_WAIT_S)
    if reply is None:
        raise Timeout(f"no {model.pool} worker validated {model.name!r} within {VALIDATE_WAIT_S} s",
                      details={"pool": model.pool})
    return jsonify(json.loads(reply[1]))

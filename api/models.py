"""``/models``: the model repository, with ``loaded`` as the worker processes report it, and load / unload /
validate commands that reach every worker process serving the model."""

from __future__ import annotations

import json
import time

from flask import Blueprint, jsonify

from api.auth import require_operator_or_key
from api.controls import require_admin
from api.request_context import services
from inferno_jobs import blocking
from inferno_jobs.circuit import CircuitBreaker
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


def circuit_breaker() -> CircuitBreaker:
    """The models' circuit breakers (docs/operations.md#circuit-breakers)."""
    return CircuitBreaker(services().redis, services().settings)


def seed_fields(model) -> dict:
    """Seed 000's ``name`` and, where the worker has one, ``context_size``: the tokens a generation model's
    context holds (``context_length``), or an embedding model's inputs are cut to (``max_tokens``), with the
    defaults the workers use."""
    out = {"name": model.name}
    if model.type == "completion":
        out["context_size"] = int(model.options.get("context_length", 2048))
    elif model.type == "embedding":
        out["context_size"] = int(model.options.get("max_tokens", 256))
    return out


def describe(model) -> dict:
    """The model as ``GET /models`` shows it."""
    return ModelResponse().dump(dict(model.describe(), **seed_fields(model), loaded=model.name in loaded_models(),
                                     circuit=circuit_breaker().get(model.name).to_api()))


@bp.get("/models")
def list_models():
    """Every model in ``MODEL_DIR`` with its type, device, size, batch size, whether a worker has it loaded and its
    circuit breaker."""
    require_operator_or_key()
    loaded = loaded_models()
    repository = services().models.all()
    circuits = circuit_breaker().get_many(m.name for m in repository)
    models = [dict(m.describe(), **seed_fields(m), loaded=m.name in loaded, circuit=c.to_api())
              for m, c in zip(repository, circuits)]
    return jsonify(ModelList().dump({"models": models}))


@bp.post("/models/<model_id>/circuit/reset")
def reset_circuit(model_id: str):
    """Close a model's circuit breaker by hand and forget its failures (admin key): the model as ``GET /models``
    shows it."""
    require_admin()
    model = services().models.get(model_id)
    circuit_breaker().reset(model.name)
    return jsonify(describe(model))


def apply_command(names: list[str], action: str) -> bool:
    """Ask every worker to ``load`` or ``unload`` the models ``names``; True once the workers report them so,
    False if they still do not after ``COMMAND_WAIT_S`` (the command stays in force and is applied later)."""
    for name in names:
        request_command(services().store, name, action)
    want = action == "load"
    deadline = time.monotonic() + COMMAND_WAIT_S
    while True:
        loaded = loaded_models()
        if all((name in loaded) == want for name in names):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def _command(model_id: str, action: str):
    require_admin()  # a load or unload changes what every tenant's jobs run on
    model = services().models.get(model_id)
    started = time.monotonic()
    done = apply_command([model.name], action)
    # 200 once the workers report the new state; 202 while it is still being applied. Seed 000's fields beside
    # the model; no memory_usage_bytes: workers report which models they hold, not what each takes.
    body = dict(describe(model), model_id=model.name,
                status=(f"{action}ed" if done else f"{action}ing"))
    if done and action == "load":
        body["load_time_ms"] = round((time.monotonic() - started) * 1000)
    return jsonify(ModelResponse().dump(body)), (200 if done else 202)


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
    require_operator_or_key()
    return jsonify(run_validation(services().models.get(model_id)))


def run_validation(model) -> dict:
    """Have a worker of ``model``'s pool load it afresh and run a sample: its report; raises :class:`Timeout`."""
    svc = services()
    reply_key = svc.store.keys.model_validation(new_id("val"))
    svc.celery.send_task(VALIDATE_MODEL, args=[model.name, reply_key], queue=queue_name(model.pool, "high"))
    reply = None
    for wait_s in blocking.slices(svc.redis, VALIDATE_WAIT_S):  # each BLPOP within the socket timeout
        reply = svc.redis.blpop([reply_key], timeout=wait_s)
        if reply is not None:
            break
    if reply is None:
        raise Timeout(f"no {model.pool} worker validated {model.name!r} within {VALIDATE_WAIT_S} s",
                      details={"pool": model.pool})
    return json.loads(reply[1])

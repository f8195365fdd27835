"""``/models``: the model repository, with ``loaded`` as the worker processes report it, and load / unload /
validate commands that reach every worker process serving the model."""

from __future__ import annotations

import json
import time

from flask import Blueprint, jsonify

from api.auth import require_operator_or_key
from api.controls import require_admin
from api.health import workers_online
from api.request_context import services
from inferno_jobs import blocking
from inferno_jobs.circuit import CircuitBreaker
from inferno_jobs.errors import ModelNotLoaded, Timeout
from inferno_jobs.job import new_id, now
from inferno_jobs.queue import queue_name
from inferno_jobs.schemas import ModelList, ModelResponse
from workers.celery_app import VALIDATE_MODEL
from workers.model_watch import request_command

bp = Blueprint("models", __name__)

COMMAND_WAIT_S = 10
ACTIVE_REPORT_S = 5  # a worker process that reported this recently is alive and applies commands
VALIDATE_WAIT_S = 60


def worker_reports() -> dict[str, dict]:
    """What each worker process reported within the last few lease periods: ``{worker: {models, load_errors}}``."""
    svc = services()
    horizon = now() - 3 * svc.settings.lease_s
    reports = {(k.decode() if isinstance(k, bytes) else k): json.loads(v)
               for k, v in svc.redis.hgetall(svc.store.keys.loaded_models()).items()}
    return {worker: r for worker, r in reports.items() if r.get("reported_at", 0) >= horizon}


def loaded_models(reports: dict[str, dict] | None = None) -> set[str]:
    """Models that some worker process reported loaded within the last few lease periods (in ``reports``, as
    :func:`worker_reports` gives them, when the caller has read them already)."""
    reports = worker_reports() if reports is None else reports
    return {m for r in reports.values() for m in r.get("models", [])}


def check_load_errors(name: str, since: float, reports: dict[str, dict]) -> None:
    """Raise :class:`ModelNotLoaded` naming the worker and its reason if a worker process in ``reports`` failed to
    load model ``name`` at or after ``since`` (the command's time)."""
    for worker, report in sorted(reports.items()):
        error = (report.get("load_errors") or {}).get(name)
        if error and error.get("at", 0) >= since:
            raise ModelNotLoaded(f"model {name!r} failed to load in worker {worker}: {error.get('message')}",
                                 details={"worker": worker, "error": error.get("message")})


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
    False if they still do not after ``COMMAND_WAIT_S`` (the command stays in force and is applied later). A load
    that a worker process reports failing raises :class:`ModelNotLoaded` with its reason (503)."""
    since = now()
    # The processes that report now (their model watchers report every second) must have applied the command
    # before their report says anything about it.
    reports = worker_reports()
    active = [w for w, r in reports.items() if r.get("reported_at", 0) >= since - ACTIVE_REPORT_S]
    generation = max(request_command(services().store, name, action) for name in names)
    want = action == "load"
    pools = {services().models.get(name).pool for name in names}
    if want and not any(reports[w].get("pool", "cpu") in pools for w in active):
        return False  # no worker of the model's pool runs now: the command waits for one (202)
    deadline = time.monotonic() + COMMAND_WAIT_S
    while True:
        reports = worker_reports()  # one read of Redis a poll
        if want:
            for name in names:
                check_load_errors(name, since, reports)
        applied = all((reports.get(w, {}).get("generation") or 0) >= generation for w in active if w in reports)
        loaded = loaded_models(reports)
        if applied and all((name in loaded) == want for name in names):
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
    if not any(w.get("pool") == model.pool for w in workers_online()):  # its message would wait for nobody
        raise ModelNotLoaded(f"no {model.pool} worker is online to validate {model.name!r}",
                             details={"pool": model.pool}, retry_after_s=30)
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

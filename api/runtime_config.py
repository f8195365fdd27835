"""``/config`` and ``/restart`` (seed 001): the engine settings that change live, and a graceful restart of
every worker's engine (docs/configuration.md#runtime-configuration, docs/operations.md#restarting-the-engine).

A change is stored once in Redis (``inferno_jobs/engine_config.py``); every worker process re-reads it within about
a second, so the next micro-batch already uses it. Reading the config needs any valid key; changing it and
restarting need an admin key.
"""

from __future__ import annotations

import json
import numbers
import time

from flask import Blueprint, jsonify
from marshmallow import Schema, ValidationError, fields, validate

from api.body import json_body, load
from api.controls import require_admin
from api.auth import require_operator_or_key
from api.request_context import services
from inferno_jobs import engine_config
from inferno_jobs.job import isoformat, now

bp = Blueprint("runtime_config", __name__)

RESTART_WAIT_S = 5
LIVE_REPORT_S = 5


class StrictBoolean(fields.Boolean):
    """A JSON ``true`` or ``false``; ``1``, ``"yes"`` and the like are a type error, not a guess."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise ValidationError("Not a valid boolean; send true or false.")
        return value


class StrictInteger(fields.Integer):
    """A JSON integer (not a string, a float or a boolean)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError("Not a valid integer.")
        return value


class StrictFloat(fields.Float):
    """A JSON number (not a string or a boolean)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValidationError("Not a valid number.")
        return super()._deserialize(value, attr, data, **kwargs)


class EngineConfigSchema(Schema):
    """The live engine settings (seed 001's names and units)."""

    enable_batching = fields.Boolean()
    max_batch_size = fields.Integer(metadata={"description": "jobs per micro-batch; 0: each model's own"})
    batch_timeout = fields.Float(metadata={"description": "seconds a micro-batch waits; 0: each model's own"})
    enable_cache = fields.Boolean()
    max_cache_entries = fields.Integer()
    cache_ttl_seconds = fields.Integer()
    enable_quantization = fields.Boolean()
    num_threads = fields.Integer(metadata={"description": "ONNX Runtime threads of new sessions; 0: automatic"})
    enable_throttling = fields.Boolean()
    max_concurrent_requests = fields.Integer()


class EngineConfigUpdate(Schema):
    """``POST /config``: any of the settings; the others keep their values. An unknown field is a 400."""

    enable_batching = StrictBoolean()
    max_batch_size = StrictInteger(validate=validate.Range(0, 4096))
    batch_timeout = StrictFloat(validate=validate.Range(0, 10))
    enable_cache = StrictBoolean()
    max_cache_entries = StrictInteger(validate=validate.Range(min=0))
    cache_ttl_seconds = StrictInteger(validate=validate.Range(min=1))
    enable_quantization = StrictBoolean(validate=validate.Equal(
        False, error="quantization is not supported: inferno-jobs serves each model's ONNX file as exported; "
                     "export a quantized model into MODEL_DIR instead"))
    num_threads = StrictInteger(validate=validate.Range(0, 256))
    enable_throttling = StrictBoolean()
    max_concurrent_requests = StrictInteger(validate=validate.Range(min=1))


class ConfigResponse(Schema):
    """``GET /config``."""

    current_config = fields.Nested(EngineConfigSchema)
    timestamp = fields.String()


class ConfigUpdateResponse(Schema):
    """``POST /config``: what changed (fields sent with their current value are left out) and the result."""

    success = fields.Boolean()
    message = fields.String()
    updated_parameters = fields.Dict(keys=fields.String())
    current_config = fields.Nested(EngineConfigSchema)


class RestartResponse(Schema):
    """``POST /restart``: ``READY`` once every worker process restarted its engine, else ``RESTARTING``."""

    success = fields.Boolean()
    message = fields.String()
    state = fields.String()
    workers = fields.List(fields.String())
    pending = fields.List(fields.String())


ROUTES: dict = {
    "/config": {
        "get": ("The live engine settings", None, 200, "ConfigResponse", (401,)),
        "post": ("Change engine settings on every worker (admin)", "EngineConfigUpdate", 200,
                 "ConfigUpdateResponse", (400, 401, 403)),
    },
    "/restart": {
        "post": ("Restart every worker's engine gracefully: running jobs finish, queued jobs stay (admin); 202 "
                 "while some worker processes have not confirmed", None, 200, "RestartResponse", (401, 403)),
    },
}
SCHEMAS: dict = {"EngineConfig": EngineConfigSchema, "EngineConfigUpdate": EngineConfigUpdate,
                 "ConfigResponse": ConfigResponse, "ConfigUpdateResponse": ConfigUpdateResponse,
                 "RestartResponse": RestartResponse}


def _current() -> engine_config.EngineConfig:
    svc = services()
    return engine_config.load(svc.redis, svc.store.keys, svc.settings)


@bp.get("/config")
def get_config():
    """The engine settings every worker uses now."""
    require_operator_or_key()
    return jsonify(ConfigResponse().dump({"current_config": _current().to_dict(), "timestamp": isoformat(now())}))


@bp.post("/config")
def update_config():
    """Change some engine settings for every worker process (each sees it within about a second)."""
    require_admin()
    requested = load(EngineConfigUpdate(), json_body())
    svc = services()
    before = _current().to_dict()
    changes = {name: value for name, value in requested.items() if before[name] != value}
    engine_config.save(svc.redis, svc.store.keys, changes)
    reader = getattr(svc, "_engine_config", None)
    if reader is not None:  # this API process's own cached copy (api/request_context.py)
        reader.invalidate()
    return jsonify(ConfigUpdateResponse().dump({
        "success": True, "message": "Configuration updated successfully", "updated_parameters": changes,
        "current_config": _current().to_dict()}))


@bp.post("/restart")
def restart():
    """Restart the engine of every job worker process: each drops its ONNX Runtime sessions and builds new ones with
    the current settings, loading the pinned models again. A job running now finishes on the sessions it started
    with; queued jobs stay queued. ``READY`` once every live process acknowledged, else 202 ``RESTARTING``."""
    require_admin()
    svc = services()
    keys = svc.store.keys
    wanted = int(svc.redis.incr(keys.engine_restart()))
    processes = live_processes()
    deadline = time.monotonic() + RESTART_WAIT_S
    while True:
        acks = {(k.decode() if isinstance(k, bytes) else k): int(v)
                for k, v in svc.redis.hgetall(keys.engine_restart_acks()).items()}
        pending = [p for p in processes if acks.get(p, 0) < wanted]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    gone = [p for p in acks if p not in processes]
    if gone:  # processes that exited since: their acknowledgements are of no use
        svc.redis.hdel(keys.engine_restart_acks(), *gone)
    if processes and not pending:
        body = {"success": True, "state": "READY", "message": "Engine restarted successfully: every worker process "
                "runs new jobs on new sessions with the current configuration; queued jobs stay queued"}
    elif processes:
        body = {"success": False, "state": "RESTARTING",
                "message": f"{len(pending)} of {len(processes)} worker processes did not confirm the restart within "
                           f"{RESTART_WAIT_S} s; they apply it as soon as they poll again"}
    else:
        body = {"success": False, "state": "RESTARTING",
                "message": "no worker process is running; workers that start use the current configuration"}
    body.update(workers=[p for p in processes if p not in pending], pending=pending)
    return jsonify(RestartResponse().dump(body)), (200 if body["state"] == "READY" else 202)


def live_processes() -> list[str]:
    """Job worker processes (``host:pid``) that reported in the last few seconds (they do every second)."""
    svc = services()
    horizon = now() - LIVE_REPORT_S
    reports = {(k.decode() if isinstance(k, bytes) else k): json.loads(v)
               for k, v in svc.redis.hgetall(svc.store.keys.loaded_models()).items()}
    return sorted(name for name, report in reports.items()
                  if report.get("reported_at", 0) >= horizon and report.get("pool") != "webhooks")

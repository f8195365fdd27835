"""Model management tasks: validation runs in a pool child, where the model would serve jobs."""

from __future__ import annotations

import json

from celery.signals import worker_process_init

from inferno_jobs.errors import InfernoError
from workers.batching import worker_identity
from workers.celery_app import VALIDATE_MODEL, app
from workers.model_watch import ModelWatcher, validate
from workers.runtime import runtime

_watcher: ModelWatcher | None = None


@worker_process_init.connect
def _start_model_watch(**kwargs) -> None:
    # After fork: this child loads the models operators pinned, and follows later load/unload commands.
    global _watcher
    _watcher = ModelWatcher(runtime, worker_identity()).start()


@app.task(name=VALIDATE_MODEL, acks_late=True, reject_on_worker_lost=True)
def validate_model(name: str, reply_key: str) -> None:
    """Load model ``name`` afresh, run a sample through it, and push the report onto ``reply_key``."""
    store = runtime.store
    try:
        report = validate(runtime.engine, runtime.engine.repository.get(name))
    except InfernoError as exc:  # the model vanished from this host's repository
        report = {"id": name, "valid": False, "error": exc.to_dict()}
    report["worker"] = worker_identity()
    with store.redis.pipeline() as pipe:
        pipe.rpush(reply_key, json.dumps(report))
        pipe.expire(reply_key, 300)
        pipe.execute()
    runtime.report_loaded(report["worker"])


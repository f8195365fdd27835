"""Keeps each worker process's loaded models in step with what operators asked (``POST /models/<id>/load`` and
``/unload``), and reports what it has loaded so ``GET /models`` can show ``loaded``.

Commands live in Redis (one per model, the latest wins) under a generation counter; every pool child polls the
counter on a daemon thread and acts when it moves, so a command reaches every process that serves the model,
however many hosts there are. ``POST /restart`` works the same way: a restart counter, and each process rebuilds its
engine when the counter moves and acknowledges it (docs/operations.md#restarting-the-engine).
"""

from __future__ import annotations

import json
import logging
import threading
import time

from inferno_jobs.errors import InfernoError
from inferno_jobs.job import JobType, now
from inferno_jobs.model import ModelConfig
from inferno_jobs.schemas import INPUT_SCHEMAS

log = logging.getLogger(__name__)

# A small input of each model type, for validation. Filled through the job schemas so defaults apply.
SAMPLES = {
    "predict": lambda m: (JobType.PREDICT, {"features": [[0.0] * int(m.options.get("n_features", 1))]}),
    "embedding": lambda m: (JobType.EMBEDDING, {"input": ["inferno-jobs validation sentence"]}),
    "completion": lambda m: (JobType.COMPLETION, {"prompt": "Hello", "max_tokens": 2, "temperature": 0}),
}


def sample_input(model: ModelConfig) -> dict:
    """A valid input for ``model``, with every default filled in."""
    job_type, raw = SAMPLES[model.type](model)
    return INPUT_SCHEMAS[job_type]().load(raw)


def validate(engine, model: ModelConfig) -> dict:
    """Load ``model`` afresh and run a sample through it: ``{valid, latency_ms, providers, output | error}``."""
    report = {"id": model.name, "type": model.type, "valid": False}
    started = time.perf_counter()
    try:
        runner = engine.load(model)
        [outcome] = engine.run(model.name, [sample_input(model)])
        if isinstance(outcome, InfernoError):
            raise outcome
        report.update(valid=True, providers=runner.providers, output_keys=sorted(outcome))
    except InfernoError as exc:
        report["error"] = exc.to_dict()
    except Exception as exc:  # a broken model must produce a report, never a hung request
        report["error"] = {"code": "MODEL_NOT_LOADED", "message": f"{type(exc).__name__}: {exc}"}
    report["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return report


class ModelWatcher:
    """One per worker process: applies load/unload commands and reports the loaded models."""

    def __init__(self, runtime, worker: str, interval_s: float = 1.0):
        self.runtime = runtime
        self.worker = worker
        self.interval_s = interval_s
        self.seen_generation: int | None = None
        self.seen_restart: int | None = None
        self._stop = threading.Event()

    def restart_if_asked(self) -> bool:
        """Rebuild this process's engine if ``POST /restart`` was asked since it last looked, and acknowledge the
        restart count it now runs with. A new process starts with a fresh engine, so it only acknowledges."""
        store = self.runtime.store
        restart = int(store.redis.get(store.keys.engine_restart()) or 0)
        restarted = self.seen_restart is not None and restart != self.seen_restart
        if restarted:
            self.runtime.restart_engine()
            self.seen_generation = None  # the new engine loads the pinned models again
        if restart != self.seen_restart:
            self.seen_restart = restart
            store.redis.hset(store.keys.engine_restart_acks(), self.worker, restart)
        return restarted

    def sync(self) -> bool:
        """Apply a restart and the model commands if they moved; report what is loaded. True if it applied
        anything."""
        store = self.runtime.store
        applied = self.restart_if_asked()
        generation = int(store.redis.get(store.keys.model_generation()) or 0)
        if generation != self.seen_generation:
            self.seen_generation = generation
            engine = self.runtime.engine
            for name, raw in store.redis.hgetall(store.keys.model_commands()).items():
                name = name.decode() if isinstance(name, bytes) else name
                action = json.loads(raw)["action"]
                try:
                    if action == "load" and engine.repository.get(name).pool != engine.pool:
                        continue  # another pool's model (a gpu model on a cpu worker): its own workers load it
                    if action == "load":  # loads it, or again if its files changed since (Engine.runner)
                        engine.runner(name, recheck=True)
                    elif action == "unload":
                        engine.unload(name)
                    applied = True
                except InfernoError as exc:
                    log.warning("model %s: %s failed: %s", name, action, exc.message)
            self.runtime.model_generation = generation  # reported: the API waits for it (api/models.py)
        self.runtime.report_loaded(self.worker)
        return applied

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sync()
            except Exception:  # Redis restarting; the next poll tries again
                log.debug("model watch failed", exc_info=True)

    def start(self) -> "ModelWatcher":
        """Sync once now (pinned models load right after fork), then poll on a daemon thread."""
        try:
            self.sync()
        except Exception:
            log.warning("initial model sync failed", exc_info=True)
        threading.Thread(target=self._run, name="inferno-model-watch", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()


def request_command(store, name: str, action: str) -> int:
    """Ask every worker to ``load`` or ``unload`` model ``name``; returns the new generation."""
    with store.redis.pipeline() as pipe:
        pipe.hset(store.keys.model_commands(), name, json.dumps({"action": action, "at": now()}))
        pipe.incr(store.keys.model_generation())
        return int(pipe.execute()[1])

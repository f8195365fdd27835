"""What one worker process holds: settings, a Redis job store and an engine, built lazily after fork."""

from __future__ import annotations

import json
import os

import redis

from inferno_jobs.config import Settings
from inferno_jobs.engine_config import EngineConfigReader
from inferno_jobs.job import now
from inferno_jobs.store import JobStore


class Runtime:
    """Per-process state. ``reset()`` after fork so no connection or session is shared with the parent."""

    def __init__(self):
        self.settings = Settings.from_env()
        self._store: JobStore | None = None
        self._engine = None
        self._engine_config: EngineConfigReader | None = None
        self._reconciler = None
        self.model_generation: int | None = None  # the model commands this process has applied (model_watch)

    def reset(self) -> None:
        """Forget connections and sessions (called in each new pool child)."""
        self._store = None
        self._engine = None
        self._engine_config = None
        self.model_generation = None

    def restart_engine(self) -> None:
        """Drop this process's engine: the next job builds a new one with the current engine config (threads),
        loading its models afresh. A job running now keeps the engine it started with until it finishes."""
        self._engine = None
        if self._engine_config is not None:
            self._engine_config.invalidate()

    @property
    def store(self) -> JobStore:
        """This process's job store."""
        if self._store is None:
            self._store = JobStore(redis.Redis.from_url(self.settings.redis_url), self.settings)
        return self._store

    @property
    def engine_config(self) -> EngineConfigReader:
        """The live engine settings (``POST /config``), re-read from Redis at most once a second."""
        if self._engine_config is None:
            self._engine_config = EngineConfigReader(self.store.redis, self.store.keys, self.settings)
        return self._engine_config

    @property
    def engine(self):
        """This process's ONNX Runtime engine (imported here so the API never loads onnxruntime)."""
        if self._engine is None:
            from workers.engine import Engine

            processes = self.settings.worker_concurrency or os.cpu_count() or 1
            self._engine = Engine(self.settings, pool=self.settings.worker_pool, processes=processes,
                                  engine_config=self.engine_config)
        return self._engine

    def report_loaded(self, worker: str) -> None:
        """Tell the API which models this process has loaded (``GET /models`` -> ``loaded``) and the last load
        failure of each model that has one (``POST /models/<id>/load`` answers it)."""
        models = self._engine.loaded() if self._engine is not None else []
        errors = dict(self._engine.load_errors) if self._engine is not None else {}
        self.store.redis.hset(self.store.keys.loaded_models(), worker,
                              json.dumps({"models": models, "reported_at": now(), "pool": self.settings.worker_pool,
                                          "load_errors": errors, "generation": self.model_generation}))

    def start_reconciler(self, celery, hostname: str | None) -> None:
        """Start the reconciler thread in the worker's main process."""
        from workers.celery_app import HARD_LIMIT_GRACE_S, enqueue
        from workers.reconciler import Reconciler

        from workers.consumers import ConsumerSync, node_queues  # paused queues: docs/operations.md#queue-controls

        # The node's own queues (its -Q): what its heartbeat reports (GET /workers, /queues) and what its consumer
        # sync may cancel and re-add; the express lane serves its high queue only.
        queues = node_queues(celery, self.settings.worker_pool)
        self._reconciler = Reconciler(self.store, lambda job: enqueue(celery, job),
                                      hostname=hostname or f"worker@{os.uname().nodename}",
                                      pool=self.settings.worker_pool, queues=queues, grace_s=HARD_LIMIT_GRACE_S)
        self._reconciler.start()
        self._consumers = ConsumerSync(self.store, celery, self._reconciler.hostname, queues).start()

    def stop_reconciler(self) -> None:
        """Stop the reconciler thread, if this process runs one."""
        if getattr(self, "_consumers", None) is not None:
            self._consumers.stop()
        if self._reconciler is not None:
            self._reconciler.stop()


runtime = Runtime()

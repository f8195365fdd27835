"""The batch chunk task: one chunk of a batch (up to the model's ``max_batch_size`` lines) as ONE engine call.

Thin, like ``run_job``: start the chunk (a chunk already done, or of a canceled or finished batch, is a no-op),
run its inputs through ``Engine.run``, store every line's outcome with the counters in one Lua call
(:meth:`inferno_jobs.batchstore.BatchStore.finish_chunk`). Late acks make it at-least-once; the store makes a
second delivery write nothing. :class:`ChunkRunner` is a plain class, testable without Celery.
"""

from __future__ import annotations

import logging
from typing import Callable

from celery.exceptions import SoftTimeLimitExceeded

from inferno_jobs.batchstore import BatchStore
from inferno_jobs.circuit import CircuitBreaker
from inferno_jobs.delivery import dispatch_outbox
from inferno_jobs.errors import BatchNotFound, InfernoError, InferenceFailed, Timeout
from inferno_jobs.metrics import BATCH_LINES, Metrics
from workers.batching import worker_identity
from workers.celery_app import RUN_BATCH_CHUNK, app
from workers.runtime import runtime

log = logging.getLogger(__name__)


class ChunkRunner:
    """Runs chunks of batches. ``engine_run(model, inputs)`` returns one result or :class:`InfernoError` each."""

    def __init__(self, batches: BatchStore, engine_run: Callable[[str, list[dict]], list], *,
                 timeout_errors: tuple[type[BaseException], ...] = (), metrics: Metrics | None = None):
        self.batches = batches
        self.engine_run = engine_run
        self.timeout_errors = timeout_errors
        self.metrics = metrics

    def run(self, batch_id: str, index: int) -> int | None:
        """Run chunk ``index``; returns what :meth:`BatchStore.finish_chunk` returned, None for a no-op."""
        try:
            if not self.batches.start_chunk(batch_id, index):
                return None
            batch = self.batches.get(batch_id)
        except BatchNotFound:
            return None
        work = self.batches.chunk(batch_id, index)
        inputs = [data for _, data in work]
        try:
            outcomes = self.engine_run(batch.model, inputs) if inputs else []
            if len(outcomes) != len(inputs):
                raise InferenceFailed(f"the engine returned {len(outcomes)} outcomes for {len(inputs)} inputs")
        except self.timeout_errors:
            outcomes = [Timeout("the chunk took longer than INFERNO_BATCH_CHUNK_TIMEOUT_S")] * len(inputs)
        except InfernoError as exc:
            outcomes = [exc] * len(inputs)
        except Exception as exc:  # the engine failing as a whole fails this chunk's lines, never hangs the batch
            outcomes = [InferenceFailed(f"inference failed: {exc}")] * len(inputs)
        stored = [(item, None, outcome.to_dict()) if isinstance(outcome, InfernoError) else (item, outcome, None)
                  for (item, _), outcome in zip(work, outcomes)]
        code = self.batches.finish_chunk(batch_id, index, stored)
        # One engine call, after its outcomes are stored (docs/operations.md#circuit-breakers).
        CircuitBreaker(self.batches.redis, self.batches.settings).record(batch.model, outcomes)
        if self.metrics is not None and code in (1, 2):  # counted by the one delivery that stored the chunk
            failed = sum(error is not None for _, _, error in stored)
            for status, n in (("succeeded", len(stored) - failed), ("failed", failed)):
                if n:
                    self.metrics.inc(BATCH_LINES, (batch.model, status), n)
        return code


@app.task(name=RUN_BATCH_CHUNK, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_batch_chunk(self, batch_id: str, index: int) -> None:
    """Run chunk ``index`` of batch ``batch_id``."""
    store = runtime.store
    runner = ChunkRunner(BatchStore(store.redis, runtime.settings), runtime.engine.run,
                         timeout_errors=(SoftTimeLimitExceeded,), metrics=store.metrics)
    outcome = runner.run(batch_id, index)
    if outcome is None:
        return
    runtime.report_loaded(worker_identity())
    log.info("batch chunk finished", extra={"batch_id": batch_id, "chunk": index, "ended_batch": outcome == 2})
    if outcome == 2:
        try:  # hand the batch's webhook event over now; the reconciler's tick is only the backstop
            dispatch_outbox(store, app)
        except Exception:
            log.exception("webhook dispatch failed; the reconciler will retry it")

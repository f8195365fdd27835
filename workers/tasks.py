"""Celery tasks. Thin: claim the job, run it (with any jobs that batch with it), store the outcome."""

from __future__ import annotations

import logging

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from inferno_jobs import resultcache
from inferno_jobs.delivery import dispatch_outbox
from inferno_jobs.metrics import record_worker_jobs
from workers.batching import BatchRunner, QueuePaused
from workers.celery_app import RUN_JOB, app, enqueue, run_job_commands
from workers.runtime import runtime
from workers import telemetry  # noqa: F401  (JSON logs, per-task log context, tracing)

log = logging.getLogger(__name__)


@worker_process_init.connect
def _after_fork(**kwargs) -> None:
    # Sessions, Redis connections and the engine belong to the child process: build them after fork.
    runtime.reset()


@worker_ready.connect
def _start_reconciler(sender=None, **kwargs) -> None:
    runtime.start_reconciler(app, getattr(sender, "hostname", None))


@worker_shutdown.connect
def _stop_reconciler(**kwargs) -> None:
    runtime.stop_reconciler()


PAUSED_RETRY_S = 2


@app.task(name=RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def run_job(self, job_id: str, model: str | None = None, **labels) -> list[dict]:
    """Run the next job of ``job_id``'s queue in fair-share order (usually ``job_id`` itself) and the queued jobs
    of its model that fit in the same micro-batch; returns what ran, which Flower shows as the task's result.

    ``model`` and ``labels`` (``tenant``, ``priority``) only label the task for Flower and the logs.
    """
    queue = (self.request.delivery_info or {}).get("routing_key")
    # The engine's repository: model configs are read once per change of config.json, not once per task.
    runner = BatchRunner(runtime.store, runtime.engine.run, model_config=runtime.engine.repository.get,
                         engine_config=runtime.engine_config, timeout_errors=(SoftTimeLimitExceeded,),
                         engine_stream=runtime.engine.stream,
                         remember=lambda jobs, outcomes: resultcache.remember(runtime.store, runtime.engine_config(),
                                                                              jobs, outcomes),
                         message_of=lambda job: run_job_commands(app, job))
    try:
        finished = runner.run(job_id, queue)
    except QueuePaused:
        # Taken just before this worker stopped consuming the paused queue: back to it, nothing runs.
        raise self.retry(countdown=PAUSED_RETRY_S)
    if finished:
        runtime.report_loaded(runner.worker)
        try:  # GET /workers: per-node jobs done, errors, run time
            record_worker_jobs(runtime.store.redis, runtime.store.keys, self.request.hostname or "", finished,
                               process=runner.worker, models=runtime.engine.loaded())
        except Exception:
            log.exception("worker stats not recorded")
    shared = []
    # The result cache: settle the jobs that shared these runs (docs/cache.md). Only a job that may have led
    # identical ones can have followers; the reconciler settles any other leader's, each tick.
    if any(job.cache_key and not job.shared_run_of for job in finished):
        try:
            shared = resultcache.settle(runtime.store, lambda job: enqueue(app, job))
        except Exception:  # a job's outcome never depends on the cache; the reconciler settles what is left
            log.exception("result cache not updated")
    for job in finished:
        last = job.attempts[-1] if job.attempts else None
        log.info("job finished", extra={
            "job_id": job.id, "model": job.model, "status": job.status.value, "priority": job.priority.value,
            "tenant": job.tenant, "request_id": job.request_id, "type": job.type.value, "attempt": len(job.attempts),
            "duration_ms": round((last.finished_at - last.started_at) * 1000, 2) if last and last.finished_at
            else None,
            "queue_wait_ms": round((job.attempts[0].started_at - job.created_at) * 1000, 2) if job.attempts
            else None})
    if any(job.webhook for job in finished + shared):
        try:  # hand the webhook events of these jobs over now; the reconciler's tick is only the backstop
            dispatch_outbox(runtime.store, app)
        except Exception:  # a job's outcome never depends on its webhook
            log.exception("webhook dispatch failed; the reconciler will retry it")
    return [{"job_id": job.id, "model": job.model, "tenant": job.tenant, "status": job.status.value}
            for job in finished]

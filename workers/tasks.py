"""Celery tasks. Thin: claim the job, run it (with any jobs that batch with it), store the outcome."""

from __future__ import annotations

import logging

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from inferno_jobs.delivery import dispatch_outbox
from inferno_jobs.model import ModelRepository
from workers.batching import BatchRunner
from workers.celery_app import RUN_JOB, app
from workers.runtime import runtime

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


@app.task(name=RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self, job_id: str) -> None:
    """Run job ``job_id`` and the queued jobs of its model that fit in the same micro-batch."""
    repository = ModelRepository(runtime.settings.model_dir)
    runner = BatchRunner(runtime.store, runtime.engine.run, model_config=repository.get,
                         timeout_errors=(SoftTimeLimitExceeded,))
    finished = runner.run(job_id)
    if finished:
        runtime.report_loaded(runner.worker)
    for job in finished:
        log.info("job finished", extra={"job_id": job.id, "model": job.model, "status": job.status.value,
                                        "priority": job.priority.value, "tenant": job.tenant,
                                        "request_id": job.request_id})
    if any(job.webhook for job in finished):
        try:  # hand the webhook events of these jobs over now; the reconciler's tick is only the backstop
            dispatch_outbox(runtime.store, app)
        except Exception:  # a job's outcome never depends on its webhook
            log.exception("webhook dispatch failed; the reconciler will retry it")

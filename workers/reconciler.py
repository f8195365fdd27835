"""Repairs what crashes leave behind, once every ``reconcile_interval_s``, in one worker at a time.

- queued jobs past ``ttl_s`` become ``expired`` (even if no message of theirs is ever consumed);
- running jobs past ``timeout_s`` (plus the hard-limit grace) become ``timed_out``;
- running jobs whose lease ran out (their worker died) are released and sent again;
- a queue whose jobs are still queued ``resend_after_s`` after their message was sent gets another one;
- a queue with queued jobs and no run message waiting gets one (inferno_jobs/tickets.py);
- followers of identical runs whose leader ended are settled (the result cache: docs/cache.md);
- webhook events left in the outbox (a process died before handing them over) are sent to the webhooks queue;
- this worker's heartbeat is written for ``/health`` and ``GET /workers``.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Callable

from inferno_jobs import resultcache, tickets
from inferno_jobs.batchstore import BatchStore
from inferno_jobs.delivery import dispatch_outbox
from inferno_jobs.errors import JobNotFound
from inferno_jobs.job import Job, JobStatus, now
from inferno_jobs.queue import all_queues, queue_name
from inferno_jobs.store import JobStore
from workers.celery_app import enqueue_chunk

log = logging.getLogger(__name__)


def _worker_celery():
    from workers.celery_app import app

    return app


class Reconciler:
    """One pass with :meth:`tick`; :meth:`start` runs it on a daemon thread."""

    def __init__(self, store: JobStore, send: Callable[[Job], None], *, hostname: str, pool: str,
                 queues: list[str], grace_s: float = 15, celery=None):
        self.store = store
        self.celery = celery  # for webhook events; None: the worker's own app
        self.send = send
        self.hostname = hostname
        self.pool = pool
        self.queues = queues
        self.grace_s = grace_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """Record that this worker is alive."""
        self.store.redis.hset(self.store.keys.workers(), self.hostname, json.dumps(
            {"hostname": self.hostname, "pool": self.pool, "queues": self.queues, "last_seen": now()}))

    def tick(self) -> dict[str, int]:
        """One reconciliation pass; returns how many jobs it expired and timed out, how many messages it re-sent
        (released jobs, queues of stale jobs) and how many it sent to starved queues."""
        counts = {"expired": 0, "timed_out": 0, "resent": 0, "messages": 0, "batches_expired": 0}
        interval = self.store.settings.reconcile_interval_s
        if not self.store.redis.set(self.store.keys.reconcile_lock(), self.hostname, nx=True,
                                    ex=max(1, int(interval))):
            return counts
        for job_id in self.store.due_for_expiry():
            if self.store.expire(job_id):
                counts["expired"] += 1
        t = now()
        for job_id in self.store.running():
            try:
                job = self.store.get(job_id)
            except Exception:
                continue
            if job.status is not JobStatus.RUNNING:
                continue
            if job.deadline is not None and t > job.deadline + self.grace_s:
                self.store.finish(job.id, JobStatus.TIMED_OUT, error={
                    "code": "TIMEOUT", "message": f"run took longer than timeout_s={job.timeout_s}"})
                counts["timed_out"] += 1
            elif job.lease_expires_at is not None and t > job.lease_expires_at:
                released = self.store.release(job.id)
                if released is not None:
                    self.send(released)
                    counts["resent"] += 1
        # Jobs still queued long after their message: a message is a ticket for its queue (inferno_jobs/tickets.py),
        # so their queue gets one, not one per job (a deep backlog would get thousands). A follower of an identical
        # run waits outside its queue's order, so it still gets its own: it then runs on its own (docs/cache.md).
        stale: dict[str, list[Job]] = {}
        for job_id in self.store.unsent(self.store.settings.resend_after_s, t):
            try:
                job = self.store.get(job_id)
            except Exception:
                continue
            if job.status is JobStatus.QUEUED:
                stale.setdefault(job.id if job.shared_run_of else queue_name(job.pool, job.priority), []).append(job)
        for jobs in stale.values():
            self.send(jobs[0])
            for job in jobs:
                self.store.mark_sent(job.id)
            counts["resent"] += 1
        # The backstop of inferno_jobs/tickets.py: a queue with queued jobs and no message waiting gets one (it
        # was lost with a crashed worker before kombu restored it, or a worker holds it until its countdown).
        for queue in tickets.starved(self.store.redis, self.store.keys, all_queues()):
            try:
                job = self.store.get(self.store.next_queued(queue, 1)[0])
            except (IndexError, JobNotFound):  # it started meanwhile
                continue
            self.send(job)
            counts["messages"] += 1
        celery = self.celery if self.celery is not None else _worker_celery()
        batches = BatchStore(self.store.redis, self.store.settings)
        # Batches an API left validating (it died before enqueuing their chunks) fail, so every batch ends.
        batches.sweep()
        # Batches whose completion_window ended: lines not started never run (their webhook event goes out below).
        counts["batches_expired"] = len(batches.expire_due())
        for batch, index in batches.stale_chunks(self.store.settings.resend_after_s):
            enqueue_chunk(celery, batch, index, self.store.settings.batch_chunk_timeout_s)
            counts["resent"] += 1
        # Followers of leaders that ended where nobody settled them yet (docs/cache.md), before their webhooks go out.
        resultcache.settle(self.store, self.send)
        dispatch_outbox(self.store, celery)
        if any(counts.values()):
            log.info("reconciled", extra=counts)
        return counts

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
                self.tick()
            except Exception:  # Redis may be restarting; try again next tick
                log.exception("reconciler pass failed")
            self._stop.wait(self.store.settings.reconcile_interval_s)

    def start(self) -> None:
        """Run :meth:`tick` every ``reconcile_interval_s`` on a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="inferno-reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and forget this worker's heartbeat."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        try:
            self.store.redis.hdel(self.store.keys.workers(), self.hostname)
        except Exception:
            pass

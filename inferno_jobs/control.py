"""Operator controls over queues: describe, pause, resume and purge (docs/operations.md#queue-controls).

Pausing is a flag in Redis (a set of queue names). Every worker watches it (``workers/consumers.py``) and stops
consuming a paused queue through Celery's own ``cancel_consumer`` / ``add_consumer`` remote control, so the
queue's messages stay in Redis, visible and counted, until it is resumed. A message a worker took just before the
pause reached it is sent back with a short countdown (``workers/tasks.py``), and micro-batches never take jobs of
a paused queue. Purging cancels every queued job of a queue, each with its ``job.canceled`` webhook: nothing is
dropped silently; the now useless messages are no-ops when consumed.
"""

from __future__ import annotations

import json

from inferno_jobs.errors import NotFound
from inferno_jobs.job import Job, JobStatus, now, transition
from inferno_jobs.queue import PRIORITY_ORDER, WEBHOOK_QUEUE, all_queues
from inferno_jobs.store import JobStore


def check_queue(name: str, *, jobs_only: bool = False) -> str:
    """``name`` if it is one of the deployment's queues; raises :class:`NotFound` otherwise."""
    known = all_queues() + ([] if jobs_only else [WEBHOOK_QUEUE])
    if name not in known:
        raise NotFound(f"queue {name!r} not found", details={"queues": known})
    return name


class QueueControl:
    """Reads and changes the state of the job queues."""

    def __init__(self, store: JobStore):
        self.store = store
        self.redis = store.redis
        self.keys = store.keys

    def paused(self) -> set[str]:
        """The queues an operator paused."""
        return {q.decode() if isinstance(q, bytes) else q for q in self.redis.smembers(self.keys.paused_queues())}

    def pause(self, queue: str) -> None:
        """Stop workers taking jobs from ``queue`` (they stop consuming it within about a second)."""
        self.redis.sadd(self.keys.paused_queues(), check_queue(queue))

    def resume(self, queue: str) -> None:
        """Let workers take jobs from ``queue`` again."""
        self.redis.srem(self.keys.paused_queues(), check_queue(queue))

    def purge(self, queue: str) -> list[str]:
        """Cancel every job queued in ``queue``; returns their ids. Running jobs are not touched."""
        check_queue(queue, jobs_only=True)
        canceled = []
        ids = [i.decode() if isinstance(i, bytes) else i for i in self.redis.zrange(self.keys.queued(queue), 0, -1)]
        for job_id in ids:
            def change(job: Job):
                if job.status is not JobStatus.QUEUED:
                    return False
                transition(job, JobStatus.CANCELED, error={"code": "CANCELED",
                                                           "message": f"purged from {queue} by an operator"})
            try:
                job = self.store.mutate(job_id, change)
            except NotFound:
                continue
            if job.status is JobStatus.CANCELED:
                canceled.append(job_id)
        return canceled

    def describe(self, queue: str, workers: list[dict]) -> dict:
        """``{name, pool, priority, depth, oldest_job_age_s, consumers, paused}`` for a job queue.

        ``workers`` are the online workers' heartbeats; a paused queue has no consumers.
        """
        _, pool, priority = queue.split(".", 2)
        oldest = None
        head = self.redis.zrange(self.keys.queued(queue), 0, 0)
        if head:
            raw = self.redis.get(self.keys.job(head[0].decode() if isinstance(head[0], bytes) else head[0]))
            if raw:
                data = json.loads(raw)
                oldest = round(now() - (data.get("requeued_at") or data["created_at"]), 3)
        paused = queue in self.paused()
        consumers = [w["hostname"] for w in workers if queue in (w.get("queues") or [])]
        return {"name": queue, "pool": pool, "priority": priority, "depth": self.store.queue_depth(queue),
                "oldest_job_age_s": oldest, "consumers": 0 if paused else len(consumers),
                "workers": consumers, "paused": paused}

    def describe_all(self, workers: list[dict]) -> list[dict]:
        """Every job queue, by pool then priority."""
        return [self.describe(q, workers) for q in all_queues()]


def paused_priorities(paused: set[str], pool: str) -> set[str]:
    """The priorities of ``pool`` whose queue is paused."""
    return {p.value for p in PRIORITY_ORDER if f"inferno.{pool}.{p.value}" in paused}

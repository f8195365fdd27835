"""Micro-batching: a worker that starts one job also claims other queued jobs of the same model and runs
them as one engine call, each keeping its own status, result and error.

A run message is a ticket for its queue, not for its job (inferno_jobs/tickets.py): the jobs a micro-batch claims
need no message of their own, and a message that finds nothing queued is a cheap no-op. Plain classes: testable
without Celery.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable

from inferno_jobs import tickets
from inferno_jobs.circuit import CircuitBreaker
from inferno_jobs.control import QueueControl, paused_priorities
from inferno_jobs.engine_config import EngineConfig
from inferno_jobs.errors import InfernoError, InferenceFailed, JobNotFound, ModelNotFound, Timeout
from inferno_jobs.job import Job, JobStatus, now
from inferno_jobs.model import ModelConfig
from inferno_jobs.queue import PRIORITY_ORDER, queue_name
from inferno_jobs.store import JobStore, Peek
from workers.heartbeat import Heartbeat
from workers.streaming import JobStream


log = logging.getLogger(__name__)


def rank(priority) -> int:
    """0 for the most urgent priority (``high``), then 1, 2."""
    return PRIORITY_ORDER.index(priority)


def worker_identity() -> str:
    """``host:pid`` of this process: the lease owner of the jobs it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str) -> bool:
    """Whether a lease owner may still be running: a dead pid on this host is not; other hosts may be."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class QueuePaused(Exception):
    """The queue of the message being run was paused after the worker took it: nothing runs, and the message goes
    back to its queue (``workers/tasks.py``)."""


class BatchRunner:
    """Runs a job and the queued jobs of its model that can join it.

    ``engine_run(model, inputs)`` returns one result dict or :class:`InfernoError` per input. ``engine_config()``
    returns the live engine settings (``POST /config``: batching on/off, batch size, batch wait); without it each
    model's own ``max_batch_size`` and ``max_batch_wait_ms`` apply.
    """

    def __init__(self, store: JobStore, engine_run: Callable[[str, list[dict]], list], *,
                 model_config: Callable[[str], ModelConfig],
                 engine_config: Callable[[], EngineConfig] | None = None,
                 timeout_errors: tuple[type[BaseException], ...] = (),
                 engine_stream: Callable[..., dict] | None = None,
                 remember: Callable[[list[Job], list], None] | None = None,
                 message_of: Callable[[Job], list] | None = None):
        self.store = store
        # message_of(job): the Redis commands of a run message labelled with ``job`` (workers.celery_app.
        # run_job_commands), for the one this worker sends when it took its queue's last (inferno_jobs/tickets.py).
        self.message_of = message_of
        # remember(jobs, outcomes): the result cache keeps the results before they are stored (docs/cache.md).
        self.remember = remember
        # engine_stream(model, input, on_token, should_stop): one streaming job (workers/streaming.py).
        self.engine_stream = engine_stream
        self.timeout_errors = timeout_errors
        self.engine_run = engine_run
        self.model_config = model_config
        self.engine_config = engine_config
        self.worker = worker_identity()
        self.peeked: Peek | None = None  # what claim_first read with the message's job

    def claim(self, job_id: str) -> Job | None:
        """Claim ``job_id`` for this process (None if this delivery must not run it)."""
        return self.store.claim(job_id, self.worker, owner_alive)

    def claim_first(self, job_id: str, queue: str | None = None) -> Job | None:
        """The job this delivery of ``job_id``'s message runs, claimed; None when it runs nothing.

        A running ``job_id`` whose worker is gone is taken over. Otherwise the message is a ticket for its
        queue: it runs the queue's next job in fair-share order (inferno_jobs/fairshare.py), which is ``job_id``
        itself unless another tenant's job is due first. A queue with queued jobs always has a message waiting or
        one on its way (inferno_jobs/tickets.py), so each job still runs; a message whose job already runs (another
        ticket took it), ran (in a micro-batch) or was canceled runs the queue's next job instead, or nothing when
        the queue is empty. ``queue``, the queue the message came from, lets the job, the queue's next ids, the
        paused queues and the messages waiting be read in one round trip; a message of a paused queue raises
        :class:`QueuePaused`.
        """
        if queue is not None:
            self.peeked = self.store.peek(job_id, queue, 8)
            job, candidates = self.peeked.job, list(self.peeked.next_ids)
            if job is None:
                return None
            if queue in self.peeked.paused:
                raise QueuePaused(queue)
        else:
            try:
                job = self.store.get(job_id)
            except JobNotFound:
                return None
            candidates = self.store.next_queued(queue_name(job.pool, job.priority), 8)
        if job.status is JobStatus.RUNNING:
            taken_over = self.claim(job_id)
            if taken_over is not None:
                return taken_over
        if job.status is JobStatus.QUEUED and job_id not in candidates:
            candidates.append(job_id)  # not in the fair order (queued before it existed): it still runs
        for candidate in candidates:  # empty for a message whose job ran in a micro-batch: a no-op, no claim tried
            claimed = self.claim(candidate)
            if claimed is not None:
                return claimed
        return None

    def pass_on(self, queue: str | None, label: Job) -> None:
        """Once this delivery claimed what it runs: if its message was the last waiting in ``queue`` and jobs are
        still queued there, send the queue another (inferno_jobs/tickets.py), labelled with ``label``, so that
        another worker takes them while this one runs. The reconciler sends one too if this never happens.

        Not when the queue held no job but the one this delivery runs: a job queued after the message was taken
        found none waiting, and stored its own."""
        peeked = self.peeked
        if queue is None or self.message_of is None or peeked is None or peeked.waiting_messages \
                or len(peeked.next_ids) <= 1:
            return
        try:
            tickets.send_if_needed(self.store.redis, self.store.keys, queue, self.message_of(label))
        except Exception:  # the reconciler's backstop sends it; what this delivery claimed still runs
            log.exception("could not pass a message on to queue %s", queue)

    def gather(self, first: Job, model: ModelConfig) -> list[Job]:
        """``first`` plus up to ``size - 1`` queued jobs of the same model, waiting at most the batch wait for
        more to arrive; size and wait are the live config's (read once per batch), else the model's own.

        Besides ``first``, a batch takes jobs of one priority: the most urgent one waiting, or ``first``'s when that
        is more urgent. So a high job that arrives while lows run goes out in a small batch of its own priority
        instead of waiting for 63 lows to be claimed, run and stored with it, and a high job's batch carries no
        lows."""
        jobs = [first]
        if self.engine_config is None:
            size, wait_ms = model.max_batch_size, model.max_batch_wait_ms
        else:
            config = self.engine_config()
            size = config.batch_size_for(model.max_batch_size)
            wait_ms = config.batch_wait_ms_for(model.max_batch_wait_ms)
        if size <= 1:
            return jobs
        deadline = time.monotonic() + wait_ms / 1000
        # Jobs of a paused queue stay where they are (inferno_jobs/control.py).
        paused = self.peeked.paused if self.peeked is not None else QueueControl(self.store).paused()
        skip = paused_priorities(paused, first.pool)
        head = self.store.most_urgent_waiting(model.name, skip)
        urgent = first.priority if head is None or rank(first.priority) <= rank(head) else head
        skip = skip | {p.value for p in PRIORITY_ORDER if p is not urgent}
        while len(jobs) < size:
            waiting = self.store.waiting(model.name, size - len(jobs), skip)
            if waiting:
                jobs += self.store.claim_many(waiting, self.worker, owner_alive)
            if len(jobs) >= size or time.monotonic() >= deadline:
                break
            time.sleep(min(0.002, max(0.0, deadline - time.monotonic())))
        return jobs

    def run(self, job_id: str, queue: str | None = None) -> list[Job]:
        """Claim, batch, run and store: returns the jobs this call finished (empty for a no-op delivery).
        ``queue`` is the queue the message came from (see :meth:`claim_first`)."""
        first = self.claim_first(job_id, queue)
        if first is None:
            return []
        try:
            model = self.model_config(first.model)
        except ModelNotFound as exc:
            self.pass_on(queue, first)
            return [self.store.finish(first.id, JobStatus.FAILED, error=exc.to_dict())]
        streaming = self.engine_stream is not None and bool(first.input.get("stream"))
        # A streaming job runs alone: no job should wait on another's tokens, and its tokens go out as they come.
        jobs = [first] if streaming else self.gather(first, model)
        self.pass_on(queue, first)

        def call() -> list:
            if streaming:
                stream = JobStream(self.store, first.id)
                return [self.engine_stream(model.name, first.input, stream.on_token, stream.should_stop)]
            return self.engine_run(model.name, [j.input for j in jobs])
        with Heartbeat(self.store, self.worker, [j.id for j in jobs]):
            try:
                outcomes = call()
            except self.timeout_errors:
                outcomes = [Timeout("run took longer than its timeout_s")] * len(jobs)
            except InfernoError as exc:
                outcomes = [exc] * len(jobs)
            except Exception as exc:  # the engine failing as a whole fails this batch, never hangs it
                outcomes = [InferenceFailed(f"inference failed: {exc}")] * len(jobs)
        if self.remember is not None:
            try:
                self.remember(jobs, outcomes)
            except Exception:  # a job's outcome never depends on the cache
                log.exception("result cache not updated")
        finished = self.finish(jobs, outcomes)
        # Once per engine call, after the outcomes are stored (docs/operations.md#circuit-breakers).
        CircuitBreaker(self.store.redis, self.store.settings).record(model.name, outcomes)
        return finished

    def finish(self, jobs: list[Job], outcomes: list) -> list[Job]:
        """Store every job's outcome in one transaction: its result, its error, or ``timed_out`` past its deadline."""
        endings = {job.id: self.ending(job, outcome) for job, outcome in zip(jobs, outcomes)}
        return self.store.finish_many(endings)

    @staticmethod
    def ending(job: Job, outcome) -> tuple[JobStatus, object, dict | None]:
        """``(status, result, error)`` for one job's outcome."""
        if isinstance(outcome, Timeout):
            return JobStatus.TIMED_OUT, None, outcome.to_dict()
        # Past its deadline a run is timed out whatever it answered: a failure then may be the time limit's doing.
        if job.deadline is not None and now() > job.deadline:
            return JobStatus.TIMED_OUT, None, {"code": "TIMEOUT",
                                               "message": f"run took longer than timeout_s={job.timeout_s}"}
        if isinstance(outcome, InfernoError):
            return JobStatus.FAILED, None, outcome.to_dict()
        return JobStatus.SUCCEEDED, outcome, None

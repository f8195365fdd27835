"""The Redis job store: the source of truth for every job.

Each change is read-check-write under WATCH/MULTI, so a status, its result, its expiry and the indexes that
follow from it change together or not at all. Celery's result backend is not used for results.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import redis

from inferno_jobs.codec import dumps, loads
from inferno_jobs.config import Settings
from inferno_jobs.errors import Conflict, IllegalTransition, JobNotFound
from inferno_jobs.events import JobEvents
from inferno_jobs import atomic, fairshare, paging, reads, tickets
from inferno_jobs.job import EVENT_FOR_STATUS, Job, JobStatus, new_id, now, transition
from inferno_jobs.job import retry as requeue
from inferno_jobs.keyspace import Keyspace
from inferno_jobs.metrics import Metrics, Tally
from inferno_jobs.queue import PRIORITY_ORDER, queue_name
from inferno_jobs.reads import Read
from inferno_jobs.webhooks import queue_body


log = logging.getLogger(__name__)

# A job that may lead identical requests in flight ended (docs/cache.md): free its in-flight key, and list it for
# resultcache.settle() only when followers wait on it (a follower joins only while its leader's record is unchanged
# since it read it, atomic.py's ``unchanged``, so none can join after this). KEYS: in-flight key, followers, settle
# list. ARGV: job id.
_LEADER_ENDED = atomic.nestable("""
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if redis.call('SCARD', KEYS[2]) > 0 then redis.call('LPUSH', KEYS[3], ARGV[1]) end
""")


# KEYS: the enqueue counter, a queue's FIFO set. ARGV: job id. Orders a new job after every job enqueued before it.
_IN_ORDER = atomic.nestable("redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[1]), ARGV[1])")

# The ends a queued job reaches only through running: seen in one change, it went through running in that change.
RAN_AT_ONCE = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMED_OUT})


@dataclass
class Peek:
    """What :meth:`JobStore.peek` read for one message."""

    job: Job | None
    next_ids: list[str]  # the queue's next queued jobs, in fair-share order
    paused: set[str]  # the paused queues
    waiting_messages: int  # messages waiting in the queue's Celery list


def _position(replies: list) -> int | None:
    """A queue position from the replies of :meth:`JobStore.read_position`."""
    fair, fifo, *ahead = replies
    rank = fair if fair is not None else fifo
    return None if rank is None else sum(ahead) + rank


class JobStore:
    """Creates, reads and changes job records in Redis."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.redis = client
        self.settings = settings
        self.keys = Keyspace(settings.key_prefix)
        self.outlook = tickets.Outlook(settings.max_waiting_messages)  # what this process saw of its queues
        self.events = JobEvents(client, settings)
        self.metrics = Metrics(client, self.keys)

    # -- reading ---------------------------------------------------------------------------------------------

    def _load(self, raw: bytes | str | None, job_id: str) -> Job:
        if raw is None:
            raise JobNotFound(f"job {job_id} not found")
        return Job.from_dict(loads(raw))

    def get(self, job_id: str, tenant: str | None = None) -> Job:
        """The job ``job_id``; another tenant's job raises :class:`JobNotFound` as if it did not exist.

        A queued job past its ``ttl_s`` is expired on read, so its status is right even with no worker running.
        """
        job = self._load(self.redis.get(self.keys.job(job_id)), job_id)
        if tenant is not None and job.tenant != tenant:
            raise JobNotFound(f"job {job_id} not found")
        if job.status is JobStatus.QUEUED and now() >= job.expires_at:
            job = self.expire(job_id) or job
        return job

    def queue_position(self, job: Job) -> int | None:
        """How many queued jobs of the same pool run before this one (0: it is next), or None unless queued.
        (The copy :meth:`create` returns carries its position at creation: ``created_position``.)"""
        return self.queue_positions([job])[0]

    def queue_positions(self, jobs: list[Job]) -> list[int | None]:
        """:meth:`queue_position` of each of ``jobs``, in one round trip (none when none is queued)."""
        queued = [i for i, job in enumerate(jobs) if job.status is JobStatus.QUEUED]
        positions: list[int | None] = [None] * len(jobs)
        if queued:
            with self.redis.pipeline(transaction=False) as pipe:
                found = reads.run(pipe, [self.read_position(pipe, jobs[i]) for i in queued])
            for i, position in zip(queued, found):
                positions[i] = position
        return positions

    def read_position(self, pipe, job: Job) -> Read:
        """:meth:`queue_position` as a read on ``pipe``: the job's rank in its queue's fair order, its rank in the
        queue's FIFO order, and the depth of every higher-priority queue of its pool."""
        own = queue_name(job.pool, job.priority)
        # Workers claim in fair-share order (inferno_jobs/fairshare.py); jobs queued before it existed keep FIFO.
        pipe.zrank(self.keys.fair_queue(own), job.id)
        pipe.zrank(self.keys.queued(own), job.id)
        higher = PRIORITY_ORDER[:PRIORITY_ORDER.index(job.priority)]
        for priority in higher:
            pipe.zcard(self.keys.queued(queue_name(job.pool, priority)))
        return Read(2 + len(higher), _position)

    def list(self, tenant: str, *, status: str | None = None, type: str | None = None,
             batch_id: str | None = None, limit: int = 20, cursor: str | None = None) -> tuple[list[Job], str | None]:
        """A tenant's jobs, newest first, filtered; returns a page and the cursor of the next one (or None).

        The cursor is the id of the last job returned; ids sort by creation time.
        """
        def load(ids: list[str]) -> list[Job | None]:
            return [Job.from_dict(loads(raw)) if raw else None
                    for raw in self.redis.mget([self.keys.job(i) for i in ids])]

        def keep(job: Job) -> bool:
            return not ((status and job.status.value != status) or (type and job.type.value != type)
                        or (batch_id and job.batch_id != batch_id))

        page, more = paging.newest_first(self.redis, self.keys.tenant_jobs(tenant), limit=limit, cursor=cursor,
                                         load=load, keep=keep)
        return page, (page[-1].id if more and page else None)

    # -- writing ---------------------------------------------------------------------------------------------

    def _expiry_s(self, job: Job) -> int:
        if job.status.terminal:
            return self.settings.result_retention_s
        # A live job must outlive every attempt it may still make, then its retention.
        return job.ttl_s + job.timeout_s * self.settings.max_attempts + self.settings.result_retention_s

    def _active_until(self, job: Job) -> float:
        """When a queued job must have ended at the latest: its entry in the tenant's concurrency count expires."""
        return job.expires_at + job.timeout_s * self.settings.max_attempts + 60

    def _write(self, pipe, job: Job, before: JobStatus | None, tally: Tally | None = None) -> None:
        """Queue the writes that store ``job`` and keep every index in step with its status; its metric moves go
        to ``tally`` when given (to be merged with other jobs' and flushed into ``pipe`` by the caller)."""
        keys = self.keys
        pipe.set(keys.job(job.id), dumps(job.to_dict()), ex=self._expiry_s(job))
        if job.status is not before:  # the job's event stream hears of every status change, in this transaction
            if before is JobStatus.QUEUED and job.status in RAN_AT_ONCE:
                # It ran within this one change (a cached or shared result, docs/cache.md): running, then its end.
                self.events.append_status(pipe, job, self._expiry_s(job), status=JobStatus.RUNNING)
            self.events.append_status(pipe, job, self._expiry_s(job))
        queue = queue_name(job.pool, job.priority)
        if before is JobStatus.QUEUED and job.status is not JobStatus.QUEUED:
            pipe.zrem(keys.queued(queue), job.id)
            pipe.zrem(keys.queued_deadlines(), job.id)
            pipe.zrem(keys.waiting(job.model), job.id)
            pipe.zrem(keys.queued_sent(), job.id)
            (fairshare.start if job.status is JobStatus.RUNNING else fairshare.leave)(pipe, keys, job)
        if job.status.terminal:
            pipe.zrem(keys.tenant_active(job.tenant), job.id)
        self.metrics.record_transition(pipe if tally is None else tally, job, before)
        if job.status is JobStatus.RUNNING:
            pipe.zadd(keys.running_leases(), {job.id: job.lease_expires_at or now()})
        elif before is JobStatus.RUNNING:
            pipe.zrem(keys.running_leases(), job.id)
        if job.status.terminal and before is not None and not before.terminal:
            if job.cache_key and not job.shared_run_of:  # it may lead identical jobs (inferno_jobs/resultcache.py)
                pipe.eval(_LEADER_ENDED, 3, keys.cache_inflight(job.cache_key), keys.cache_followers(job.id),
                          keys.cache_settle(), job.id)
            event = EVENT_FOR_STATUS[job.status]
            if job.webhook and event in (job.webhook.get("events") or [event]):
                # The body is fixed here, with the job as this move left it: a retry or replay of the event
                # sends the same bytes even after the job ran again (inferno_jobs/webhooks.py).
                message = {"id": new_id("msg"), "type": event, "job_id": job.id, "timestamp": now(),
                           "request_id": job.request_id}
                queue_body(pipe, keys, job.id, message, job.to_api(), self._expiry_s(job))
                pipe.lpush(keys.outbox(), json.dumps(message))

    def create(self, job: Job, idempotency: tuple[str, str] | None = None, *,
               settle: Callable[[Job], None] | None = None,
               publish: Callable[[Job], list[tuple[str, tuple]]] | None = None,
               guard: atomic.Guard | None = None) -> tuple[Job, bool]:
        """Store a new queued job; returns ``(job, created)``.

        ``guard`` (an :class:`atomic.Guard`, e.g. the admission checks of inferno_jobs/admission.py) runs first in
        the same atomic call; when it refuses, nothing is stored and :class:`atomic.Refused` is raised.

        ``publish(job)`` gives the Redis commands of the job's Celery message (``workers.celery_app.
        run_job_commands``): they run in the transaction that stores the job, so a job is never kept without its
        message, nor a message sent for a job that was not kept. The message is a ticket for the job's queue
        (inferno_jobs/tickets.py): it is stored only while fewer than ``max_waiting_messages`` wait there (0: always).
        Not for a job that needs no message (settled at once, or waiting on a leader's run).

        With ``idempotency=(key, body_hash)``: a key seen before with the same body returns the first job and
        ``created=False``; with another body it raises :class:`Conflict`.

        The result cache (inferno_jobs/resultcache.py) uses two variants. ``settle`` moves the new job on at once
        (to ``succeeded`` with a cached result): it is written as created and then as moved, in one transaction,
        so it has the events, metrics and webhook of any job and never waits in a queue. A job with
        ``shared_run_of`` (a follower) is queued without a place in the fair order or in its model's waiting
        set, so no worker takes it: it waits for that leader's run, unless the leader already ended or has a lower
        priority, in which case ``shared_run_of`` is cleared and it is queued as usual (the caller sends its
        message).
        """
        idem_key = self.keys.idempotency(job.tenant, idempotency[0]) if idempotency else None
        queue = queue_name(job.pool, job.priority)
        message = None
        while True:
            read: dict[str, bytes | None] = {}  # what the writes depend on: unchanged when they run, or a retry
            ticket: list | None = None  # the message's commands when it is stored only if needed
            try:
                if idem_key:
                    seen = read[idem_key] = self.redis.get(idem_key)
                    if seen is not None:
                        first = json.loads(seen)
                        if first["body_hash"] != idempotency[1]:
                            raise Conflict("Idempotency-Key was already used with a different request body",
                                           details={"job_id": first["job_id"]})
                        return self.get(first["job_id"], job.tenant), False
                if job.shared_run_of:  # the leader's ending settles its followers (and only those)
                    raw = read[self.keys.job(job.shared_run_of)] = self.redis.get(self.keys.job(job.shared_run_of))
                    leader = Job.from_dict(loads(raw)) if raw is not None else None
                    # Never wait behind a lower priority: a high job does not follow a low one's turn.
                    if leader is None or leader.status.terminal or \
                            PRIORITY_ORDER.index(leader.priority) > PRIORITY_ORDER.index(job.priority):
                        job.shared_run_of = None
                writes = self.redis.pipeline(transaction=False)  # run as one script call: atomic.py
                self._write(writes, job, None)
                writes.zadd(self.keys.tenant_jobs(job.tenant), {job.id: 0})
                stored = job
                if settle is not None:  # on a copy: a retried transaction starts again from the queued job
                    stored = Job.from_dict(job.to_dict())
                    settle(stored)
                    self._write(writes, stored, JobStatus.QUEUED)
                else:
                    writes.eval(_IN_ORDER, 2, self.keys.sequence(), self.keys.queued(queue), job.id)
                    writes.zadd(self.keys.queued_deadlines(), {job.id: job.expires_at})
                    writes.zadd(self.keys.queued_sent(), {job.id: job.created_at})
                    if job.shared_run_of:
                        writes.sadd(self.keys.cache_followers(job.shared_run_of), job.id)
                        writes.expire(self.keys.cache_followers(job.shared_run_of), self._expiry_s(job))
                    else:
                        # Its fair-share tag orders it in its queue and (unless it streams: a streaming job runs
                        # alone, never in another's micro-batch) in its model's waiting set.
                        fairshare.enqueue(writes, self.keys, job, batchable=not job.input.get("stream"))
                        if publish is not None and self.outlook.limit <= 0:  # a message per job
                            message = publish(job) if message is None else message
                            for name, args in message:
                                getattr(writes, name)(*args)
                        elif publish is not None:  # a ticket for its queue, stored only if too few wait: tickets.py
                            if message is None and self.outlook.worth_building(queue):
                                message = publish(job)
                            ticket = message or []
                    writes.zadd(self.keys.tenant_active(job.tenant), {job.id: self._active_until(job)})
                if idem_key:
                    writes.set(idem_key, json.dumps({"body_hash": idempotency[1], "job_id": job.id}),
                               ex=self.settings.result_retention_s)
                if ticket is not None:  # its reply is read below, just before the position's
                    tickets.store_if_needed(writes, queue, self.outlook.limit, ticket)
                position = self.read_position(writes, stored) if stored.status is JobStatus.QUEUED else None
                replies = atomic.execute(writes, (ticket is not None) + (position.size if position else 0),
                                         unchanged=read, guard=guard)
                if ticket is not None:
                    waiting, replies = replies[0], replies[1:]
                    self.outlook.saw(queue, waiting)
                    if waiting < 0:  # none waits after all, and none was built: send one now
                        self._send_message(queue, lambda: publish(job))
                if position is not None:  # its position, read in the same transaction
                    stored.created_position = position.decode(replies)
                return stored, True
            except redis.WatchError:
                continue

    def _send_message(self, queue: str, build: Callable[[], list[tuple[str, tuple]]]) -> None:
        """Store a run message for ``queue`` on its own, after its job, unless one waits by then (the guarded send
        workers use: inferno_jobs/tickets.py); if that fails, the reconciler sends the queue one within
        ``reconcile_interval_s``: the job is stored either way."""
        try:
            if tickets.send_if_needed(self.redis, self.keys, queue, build()):
                self.outlook.saw(queue, 1)
        except Exception:  # the job is stored and accepted: its queue gets a message from the reconciler
            log.exception("a run message for %s could not be stored; the reconciler will send one", queue)

    def mutate(self, job_id: str, change: Callable[[Job], bool | None]) -> Job:
        """Apply ``change`` to the current record and write it atomically; retried if the job changed meanwhile.

        ``change`` edits the job in place (through :func:`transition` for status moves); returning False
        means "nothing to write". Exceptions it raises propagate and nothing is written.
        """
        jobs = self.mutate_many([job_id], change)
        if not jobs:
            raise JobNotFound(f"job {job_id} not found")
        return jobs[0]

    def mutate_many(self, job_ids: list[str], change: Callable[[Job], bool | None]) -> list[Job]:
        """:meth:`mutate` for several jobs in one transaction (one MGET, then one script call that writes only if
        none of them changed meanwhile): how a micro-batch claims and finishes its jobs without a round trip per
        job. Jobs that no longer exist are left out of the returned list; the others come back in order, changed or
        not."""
        keys = [self.keys.job(i) for i in job_ids]
        while True:
            raws = self.redis.mget(keys)
            jobs, writes = [], []
            for raw in raws:
                if raw is None:
                    continue
                job = Job.from_dict(loads(raw))
                before = job.status
                if change(job) is not False:
                    writes.append((job, before))
                jobs.append(job)
            if not writes:
                return jobs
            queued = self.redis.pipeline(transaction=False)  # run as one script call: atomic.py
            tally = Tally()  # a micro-batch's jobs move the same metric fields: one command per field
            for job, before in writes:
                self._write(queued, job, before, tally)
            tally.flush(queued)
            try:
                atomic.execute(queued, unchanged=dict(zip(keys, raws)))
            except redis.WatchError:  # a job changed since it was read: read again and redo the change
                continue
            return jobs

    def transition(self, job_id: str, to: JobStatus, **kwargs) -> Job:
        """Move a job to ``to`` (see :func:`inferno_jobs.job.transition`); raises on an illegal move."""
        return self.mutate(job_id, lambda job: bool(transition(job, to, **kwargs)))

    def finish(self, job_id: str, to: JobStatus, *, result=None, error: dict | None = None) -> Job:
        """End a running job; a job that already ended (canceled, reaped, run twice) keeps its first ending.

        A job whose cancellation was requested while it ran ends ``canceled`` rather than ``succeeded``.
        """
        jobs = self.finish_many({job_id: (to, result, error)})
        if not jobs:
            raise JobNotFound(f"job {job_id} not found")
        return jobs[0]

    def finish_many(self, endings: dict[str, tuple[JobStatus, Any, dict | None]]) -> list[Job]:
        """:meth:`finish` for the jobs of one micro-batch in one transaction: ``{job_id: (status, result, error)}``."""
        def change(job: Job):
            if job.status.terminal:
                return False
            to, result, error = endings[job.id]
            if job.cancel_requested and to is JobStatus.SUCCEEDED:
                transition(job, JobStatus.CANCELED,
                           error={"code": "CANCELED", "message": "canceled by request while running"})
                return
            transition(job, to, result=result, error=error)
        return self.mutate_many(list(endings), change)

    def cancel(self, job_id: str, tenant: str | None = None) -> Job:
        """Cancel a job: a queued job becomes ``canceled`` at once and never runs; a running one is flagged.

        Raises :class:`Conflict` if the job already ended.
        """
        self.get(job_id, tenant)

        def change(job: Job):
            if job.status.terminal:
                raise Conflict(f"job {job_id} is already {job.status.value}", details={"status": job.status.value})
            if job.status is JobStatus.QUEUED:
                transition(job, JobStatus.CANCELED, error={"code": "CANCELED", "message": "canceled by request"})
            else:
                job.cancel_requested = True
        return self.mutate(job_id, change)

    def retry(self, job_id: str, tenant: str | None = None) -> Job:
        """Send a ``failed``, ``expired`` or ``timed_out`` job back to ``queued`` (same id, attempt history kept),
        with every queued index, atomically; the caller sends its new message (``workers.celery_app.enqueue``).

        Raises :class:`IllegalTransition` (409) for a job in any other status; see :func:`inferno_jobs.job.retry`.
        """
        self.get(job_id, tenant)
        key = self.keys.job(job_id)
        while True:
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    job = self._load(pipe.get(key), job_id)
                    before = job.status
                    requeue(job)
                    pipe.multi()
                    self._write(pipe, job, before)
                    pipe.eval(_IN_ORDER, 2, self.keys.sequence(), self.keys.queued(queue_name(job.pool, job.priority)),
                              job.id)
                    pipe.zadd(self.keys.queued_deadlines(), {job.id: job.expires_at})
                    pipe.zadd(self.keys.queued_sent(), {job.id: now()})
                    fairshare.enqueue(pipe, self.keys, job, batchable=not job.input.get("stream"))
                    pipe.zadd(self.keys.tenant_active(job.tenant), {job.id: self._active_until(job)})
                    pipe.execute()
                    return job
                except redis.WatchError:
                    continue

    def run_alone(self, job_id: str) -> Job | None:
        """Give a follower whose leader did not succeed its own place in the fair order and in its model's waiting
        set; returns it (the caller sends its message), or None if it no longer waits on a leader."""
        key = self.keys.job(job_id)
        while True:
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    job = Job.from_dict(loads(raw)) if raw is not None else None
                    if job is None or job.status is not JobStatus.QUEUED or not job.shared_run_of:
                        pipe.unwatch()
                        return None
                    job.shared_run_of = None
                    pipe.multi()
                    self._write(pipe, job, job.status)
                    fairshare.enqueue(pipe, self.keys, job, batchable=not job.input.get("stream"))
                    pipe.zadd(self.keys.queued_sent(), {job.id: now()})
                    pipe.execute()
                    return job
                except redis.WatchError:
                    continue

    def expire(self, job_id: str) -> Job | None:
        """Expire a queued job past its ``ttl_s``; returns it, or None if it was not due."""
        def change(job: Job):
            if job.status is not JobStatus.QUEUED or now() < job.expires_at:
                return False
            transition(job, JobStatus.EXPIRED,
                       error={"code": "TIMEOUT", "message": f"not started within ttl_s={job.ttl_s}"})
        try:
            job = self.mutate(job_id, change)
        except JobNotFound:
            return None
        return job if job.status is JobStatus.EXPIRED else None

    # -- leases ----------------------------------------------------------------------------------------------

    def claim(self, job_id: str, worker: str, owner_alive: Callable[[str], bool] = lambda owner: True) -> Job | None:
        """Start (or take over) a job for ``worker`` and give it a lease of ``lease_s``.

        Returns the running job, or None when this delivery must not run it: the job ended, was canceled (also
        while a run that was lost went on: it ends ``canceled``), expired while queued, or is running under a live
        lease of another worker (a duplicate delivery).
        A job that already used ``max_attempts`` attempts fails instead of running again.
        """
        claimed = self.claim_many([job_id], worker, owner_alive)
        return claimed[0] if claimed else None

    def claim_many(self, job_ids: list[str], worker: str,
                   owner_alive: Callable[[str], bool] = lambda owner: True) -> list[Job]:
        """:meth:`claim` for several jobs in one transaction; returns the ones this worker now runs, in order."""
        def change(job: Job):
            t = now()
            if job.status is JobStatus.QUEUED:
                if t >= job.expires_at:
                    transition(job, JobStatus.EXPIRED,
                               error={"code": "TIMEOUT", "message": f"not started within ttl_s={job.ttl_s}"})
                    return
            elif job.status is JobStatus.RUNNING:
                lease_live = job.lease_expires_at is not None and t < job.lease_expires_at
                # An orphaned job (owner None: the reconciler released it) may be taken over at once.
                if job.lease_owner == worker or (job.lease_owner and lease_live and owner_alive(job.lease_owner)):
                    return False
                if job.cancel_requested:  # canceled while its lost run was going: it ends, not runs again
                    transition(job, JobStatus.CANCELED,
                               error={"code": "CANCELED", "message": "canceled by request while running"})
                    return
                if len(job.attempts) >= self.settings.max_attempts:
                    transition(job, JobStatus.FAILED, error={
                        "code": "INFERENCE_FAILED",
                        "message": f"the worker running this job was lost {len(job.attempts)} times"})
                    return
            else:
                return False
            transition(job, JobStatus.RUNNING, at=t, worker=worker)
            job.lease_owner = worker
            job.lease_expires_at = t + self.settings.lease_s
        return [job for job in self.mutate_many(job_ids, change)
                if job.status is JobStatus.RUNNING and job.lease_owner == worker and job.attempts
                and job.attempts[-1].worker == worker and job.attempts[-1].finished_at is None]

    def release(self, job_id: str) -> Job | None:
        """Orphan a running job whose lease ran out, so that its next delivery takes it over.

        The lease is pushed ``lease_s`` ahead so the reconciler does not send it again on every tick.
        Returns the job if it was released.
        """
        def change(job: Job):
            if job.status is not JobStatus.RUNNING or (job.lease_expires_at or 0) > now():
                return False
            job.lease_owner = None
            job.lease_expires_at = now() + self.settings.lease_s
        try:
            job = self.mutate(job_id, change)
        except JobNotFound:
            return None
        return job if job.status is JobStatus.RUNNING and job.lease_owner is None else None

    def renew(self, job_ids: Iterable[str], worker: str) -> None:
        """Extend the leases ``worker`` holds on running jobs (its heartbeat)."""
        for job_id in job_ids:
            def change(job: Job):
                if job.status is not JobStatus.RUNNING or job.lease_owner != worker:
                    return False
                job.lease_expires_at = now() + self.settings.lease_s
            try:
                self.mutate(job_id, change)
            except JobNotFound:
                pass

    def due_for_expiry(self, at: float | None = None) -> list[str]:
        """Ids of queued jobs whose ``ttl_s`` has run out."""
        ids = self.redis.zrangebyscore(self.keys.queued_deadlines(), "-inf", at or now())
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    def unsent(self, older_than_s: float, at: float | None = None) -> list[str]:
        """Ids of queued jobs whose message was sent more than ``older_than_s`` ago and that still wait.

        A message can be lost when a worker dies between taking it from Redis and recording it as unacked;
        the reconciler sends those jobs again (a duplicate message is a no-op: the claim refuses it).
        """
        ids = self.redis.zrangebyscore(self.keys.queued_sent(), "-inf", (at or now()) - older_than_s)
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    def mark_sent(self, job_id: str) -> None:
        """Record that a message of a queued job was just sent (only while it is still queued)."""
        self.redis.zadd(self.keys.queued_sent(), {job_id: now()}, xx=True)

    def stale_leases(self, at: float | None = None) -> list[str]:
        """Ids of running jobs whose lease ran out: their worker is gone or stuck."""
        ids = self.redis.zrangebyscore(self.keys.running_leases(), "-inf", at or now())
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    def waiting(self, model: str, limit: int, skip_priorities: frozenset[str] | set[str] = frozenset()) -> list[str]:
        """Up to ``limit`` queued job ids of ``model``, highest priority then fair-share order (oldest first for
        one tenant), leaving out ``skip_priorities`` (their queue is paused)."""
        if not skip_priorities:
            ids = self.redis.zrange(self.keys.waiting(model), 0, limit - 1)
        else:
            ids = []
            for index, priority in enumerate(PRIORITY_ORDER):
                if priority.value in skip_priorities or len(ids) >= limit:
                    continue
                lo = index * fairshare.PRIORITY_OFFSET
                ids += self.redis.zrangebyscore(self.keys.waiting(model), lo, f"({lo + fairshare.PRIORITY_OFFSET}",
                                                start=0, num=limit - len(ids))
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    def most_urgent_waiting(self, model: str, skip_priorities: frozenset[str] | set[str] = frozenset()):
        """The most urgent priority of the queued jobs of ``model`` that a micro-batch may take (leaving out
        ``skip_priorities``), or None when there is none; one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for index in range(len(PRIORITY_ORDER)):
                lo = index * fairshare.PRIORITY_OFFSET
                pipe.zcount(self.keys.waiting(model), lo, f"({lo + fairshare.PRIORITY_OFFSET}")
            counts = pipe.execute()
        return next((p for p, n in zip(PRIORITY_ORDER, counts) if n and p.value not in skip_priorities), None)

    def running(self) -> list[str]:
        """Ids of every running job."""
        ids = self.redis.zrange(self.keys.running_leases(), 0, -1)
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    def peek(self, job_id: str, queue: str, limit: int) -> Peek:
        """What a worker reads first for each message, in one round trip: the job ``job_id`` (None if it is gone),
        :meth:`next_queued` of ``queue``, the paused queues (inferno_jobs/control.py) and how many messages wait
        in ``queue``'s Celery list (inferno_jobs/tickets.py)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.job(job_id))
            pipe.zrange(self.keys.fair_queue(queue), 0, limit - 1)
            pipe.smembers(self.keys.paused_queues())
            pipe.llen(queue)
            raw, ids, paused, waiting = pipe.execute()
        return Peek(Job.from_dict(loads(raw)) if raw is not None else None,
                    [i.decode() if isinstance(i, bytes) else i for i in ids],
                    {q.decode() if isinstance(q, bytes) else q for q in paused}, waiting)

    def next_queued(self, queue: str, limit: int) -> list[str]:
        """Up to ``limit`` queued job ids of ``queue`` in the order workers claim them (fair share)."""
        return fairshare.next_ids(self.redis, self.keys, queue, limit)

    def queue_depth(self, queue: str) -> int:
        """How many jobs wait in ``queue``."""
        return self.redis.zcard(self.keys.queued(queue))

    def queue_depths(self, queues: list[str]) -> list[int]:
        """How many jobs wait in each of ``queues``, in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.zcard(self.keys.queued(queue))
            return pipe.execute()


__all__ = ["JobStore", "IllegalTransition", "Peek"]

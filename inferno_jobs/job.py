"""The job record and its state machine.

``queued -> running -> succeeded | failed | canceled | timed_out`` and ``queued -> expired | canceled``.
A running job whose worker died may be taken over (``running -> running``, a new attempt). Terminal states
never change: :func:`transition` is the one function that changes a status, and an illegal move raises.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, ClassVar

from inferno_jobs.errors import IllegalTransition


class JobStatus(str, Enum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMED_OUT = "timed_out"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        """True for the states a job never leaves."""
        return self in TERMINAL


class JobType(str, Enum):
    """What a job asks a model to do; each type has its own input and result shape."""

    COMPLETION = "completion"
    CHAT = "chat"
    EMBEDDING = "embedding"
    PREDICT = "predict"
    FEATURE_IMPORTANCE = "feature_importance"  # per-feature importance of one tabular row (inferno_jobs/importance.py)


class Priority(str, Enum):
    """Queue priority: a worker takes every queued ``high`` job before any ``normal`` or ``low`` one."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.TIMED_OUT,
                      JobStatus.EXPIRED})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.EXPIRED, JobStatus.CANCELED}),
    JobStatus.RUNNING: frozenset({JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED,
                                  JobStatus.TIMED_OUT}),
    **{status: frozenset() for status in TERMINAL},
}

# The webhook event each terminal status emits.
EVENT_FOR_STATUS = {
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELED: "job.canceled",
    JobStatus.EXPIRED: "job.expired",
    JobStatus.TIMED_OUT: "job.timed_out",
}

# RFC 4648 base32 letters -> Crockford's (lower case): the same 5-bit groups, written the way ids are.
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789abcdefghjkmnpqrstvwxyz")
_id_lock = threading.Lock()
_last_id_value = 0


def new_id(prefix: str) -> str:
    """A time-sortable id (48-bit milliseconds + 80 random bits, Crockford base32), e.g. ``job_01j...``.

    Ids sort by creation time, which is what cursor paging relies on.
    """
    global _last_id_value
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    with _id_lock:
        # Monotonic within a process: ids made in the same millisecond still sort in creation order.
        if value <= _last_id_value:
            value = _last_id_value + 1
        _last_id_value = value
    # 26 digits of 5 bits are 130 bits: the 128-bit value shifted left by 6 fills 17 bytes, whose first 26
    # base32 digits are the value's, most significant first.
    digits = base64.b32encode((value << 6).to_bytes(17, "big"))[:26].translate(_TO_CROCKFORD)
    return f"{prefix}_{digits.decode()}"


def is_id(prefix: str, value: str) -> bool:
    """Whether ``value`` has the form of a :func:`new_id` of ``prefix`` (it may name nothing)."""
    return re.fullmatch(rf"{re.escape(prefix)}_[0-9a-hjkmnp-tv-z]{{26}}", value) is not None


def now() -> float:
    """Unix time in seconds; the one clock the job record uses."""
    return time.time()


_second = (None, "")  # (whole second, its "YYYY-MM-DDTHH:MM:SS" text): job records format the same second often


def isoformat(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC with a ``Z`` (millisecond precision), or None."""
    global _second
    if ts is None:
        return None
    whole = math.floor(ts)
    micros = round((ts - whole) * 1e6)  # as datetime rounds a timestamp; the text then truncates to milliseconds
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    second, text = _second
    if second != whole:
        text = datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (whole, text)
    return f"{text}.{micros // 1000:03d}Z"


@dataclass
class Attempt:
    """One run of a job by one worker."""

    worker: str
    started_at: float
    finished_at: float | None = None
    outcome: str | None = None


@dataclass
class Job:
    """A job record as stored in Redis. ``to_api()`` gives the contract's job object."""

    id: str
    type: JobType
    model: str
    tenant: str
    input: dict
    priority: Priority = Priority.NORMAL
    pool: str = "cpu"
    status: JobStatus = JobStatus.QUEUED
    created_at: float = field(default_factory=now)
    started_at: float | None = None
    finished_at: float | None = None
    ttl_s: int = 3600
    timeout_s: int = 600
    attempts: list[Attempt] = field(default_factory=list)
    batch_id: str | None = None
    metadata: dict = field(default_factory=dict)
    webhook: dict | None = None
    result: Any = None
    error: dict | None = None
    cancel_requested: bool = False
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    request_id: str | None = None
    requeued_at: float | None = None  # set by retry(): its ttl_s counts from here
    cache_key: str | None = None  # a cacheable job's result-cache key (inferno_jobs/resultcache.py)
    shared_run_of: str | None = None  # a follower: the id of the identical job in flight whose run it shares
    # Not stored: the queue position read in the transaction that created this copy (JobStore.create), for the
    # answer to its submission; JobStore.queue_position reads the live one.
    created_position: ClassVar[int | None] = None

    @classmethod
    def create(cls, **fields) -> "Job":
        """A new queued job with a fresh id."""
        return cls(id=new_id("job"), **fields)

    @property
    def expires_at(self) -> float:
        """When a job still queued becomes ``expired`` (``ttl_s`` after it was queued, or queued again)."""
        return (self.requeued_at or self.created_at) + self.ttl_s

    @property
    def deadline(self) -> float | None:
        """When a running job becomes ``timed_out`` (None unless running)."""
        if self.started_at is None or self.status is not JobStatus.RUNNING:
            return None
        return self.attempts[-1].started_at + self.timeout_s if self.attempts else self.started_at + self.timeout_s

    def to_dict(self) -> dict:
        """The full record, JSON-ready, for storage. Shallow: ``input``, ``result`` and the other nested values are
        the record's own (serialise it, do not change it); a deep copy of an embedding result costs more than
        storing it."""
        data = {name: getattr(self, name) for name in _JOB_FIELDS}
        data["type"] = self.type.value
        data["priority"] = self.priority.value
        data["status"] = self.status.value
        data["attempts"] = [dict(vars(a)) for a in self.attempts]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Job":
        """Rebuild a record written by :meth:`to_dict`."""
        data = dict(data)
        data["type"] = JobType(data["type"])
        data["priority"] = Priority(data["priority"])
        data["status"] = JobStatus(data["status"])
        data["attempts"] = [Attempt(**a) for a in data.get("attempts", [])]
        return cls(**{k: v for k, v in data.items() if k in _JOB_FIELDS})

    def to_api(self, queue_position: int | None = None) -> dict:
        """The contract's job object."""
        return {
            "id": self.id,
            "object": "job",
            "type": self.type.value,
            "model": self.model,
            "priority": self.priority.value,
            "status": self.status.value,
            "created_at": isoformat(self.created_at),
            "started_at": isoformat(self.started_at),
            "finished_at": isoformat(self.finished_at),
            "queue_position": queue_position if self.status is JobStatus.QUEUED else None,
            "attempts": len(self.attempts),
            "attempt_history": [
                {"worker": a.worker, "started_at": isoformat(a.started_at), "finished_at": isoformat(a.finished_at),
                 "outcome": a.outcome}
                for a in self.attempts
            ],
            "batch_id": self.batch_id,
            "metadata": self.metadata,
            "cancel_requested": self.cancel_requested,
            "result": self.result,
            "error": self.error,
        }


_JOB_FIELDS = tuple(f.name for f in dataclasses.fields(Job))


def transition(job: Job, to: JobStatus, *, at: float | None = None, worker: str | None = None,
               result: Any = None, error: dict | None = None) -> Job:
    """Move ``job`` to ``to`` in place and return it; the only function that changes a status.

    Raises :class:`IllegalTransition` for a move the table does not allow (any move out of a terminal state).
    Entering ``running`` starts a new attempt (a takeover closes the previous one as ``worker_lost``);
    entering a terminal state closes the current attempt with that outcome.
    """
    if to not in TRANSITIONS[job.status]:
        raise IllegalTransition(f"job {job.id} is {job.status.value} and cannot become {to.value}",
                                details={"status": job.status.value})
    at = now() if at is None else at
    if to is JobStatus.RUNNING:
        if job.attempts and job.attempts[-1].finished_at is None:
            job.attempts[-1].finished_at = at
            job.attempts[-1].outcome = "worker_lost"
        job.attempts.append(Attempt(worker=worker or "unknown", started_at=at))
        job.started_at = job.started_at or at
    else:
        job.finished_at = at
        if job.attempts and job.attempts[-1].finished_at is None:
            job.attempts[-1].finished_at = at
            job.attempts[-1].outcome = to.value
        job.lease_owner = None
        job.lease_expires_at = None
    job.status = to
    if result is not None:
        job.result = result
    if error is not None:
        job.error = error
    return job


RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.TIMED_OUT})


def retry(job: Job, *, at: float | None = None) -> Job:
    """Send a ``failed``, ``expired`` or ``timed_out`` job back to ``queued`` in place and return it.

    The one deliberate exception to "terminal states never change", for an operator's ``POST /jobs/<id>/retry``:
    the job keeps its id and its attempt history (the next run is a new attempt), its result and error are
    cleared, and its ``ttl_s`` counts again from now. Raises :class:`IllegalTransition` for any other status.
    """
    if job.status not in RETRYABLE:
        raise IllegalTransition(f"job {job.id} is {job.status.value}: only failed, expired or timed_out jobs "
                                "can be retried", details={"status": job.status.value})
    at = now() if at is None else at
    job.status = JobStatus.QUEUED
    job.requeued_at = at
    job.started_at = None
    job.finished_at = None
    job.result = None
    job.error = None
    job.cancel_requested = False
    job.lease_owner = None
    job.lease_expires_at = None
    return job

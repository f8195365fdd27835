"""The batch record and its state machine.

``validating -> queued -> running -> completed | failed | canceled | expired``. A batch whose every line failed
validation goes ``validating -> failed``; a batch may be canceled from any live state, and a batch with a
``completion_window`` that is still live when the window ends becomes ``expired`` (its finished lines keep their
results; lines that never ran are reported ``expired``). Terminal states never change.
:func:`check_transition` is the table's one gate; :class:`inferno_jobs.batchstore.BatchStore` applies moves
(some of them inside Lua scripts, so that a chunk's results, the counters and the final status move together).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum

from inferno_jobs.errors import IllegalTransition
from inferno_jobs.job import JobType, Priority, isoformat, now


class BatchStatus(str, Enum):
    """Where a batch is in its life."""

    VALIDATING = "validating"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        """True for the states a batch never leaves."""
        return self in BATCH_TERMINAL


BATCH_TERMINAL = frozenset({BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.CANCELED, BatchStatus.EXPIRED})
# The same as the strings an API answer holds: a str Enum member hashes by its name, so a set of members never
# finds a raw status string.
BATCH_TERMINAL_VALUES = frozenset(status.value for status in BATCH_TERMINAL)

BATCH_TRANSITIONS: dict[BatchStatus, frozenset[BatchStatus]] = {
    BatchStatus.VALIDATING: frozenset({BatchStatus.QUEUED, BatchStatus.RUNNING, BatchStatus.COMPLETED,
                                       BatchStatus.FAILED, BatchStatus.CANCELED, BatchStatus.EXPIRED}),
    BatchStatus.QUEUED: frozenset({BatchStatus.RUNNING, BatchStatus.COMPLETED, BatchStatus.FAILED,
                                   BatchStatus.CANCELED, BatchStatus.EXPIRED}),
    BatchStatus.RUNNING: frozenset({BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.CANCELED,
                                    BatchStatus.EXPIRED}),
    **{status: frozenset() for status in BATCH_TERMINAL},
}

# The webhook event each terminal status emits.
BATCH_EVENT_FOR_STATUS = {
    BatchStatus.COMPLETED: "batch.completed",
    BatchStatus.FAILED: "batch.failed",
    BatchStatus.CANCELED: "batch.canceled",
    BatchStatus.EXPIRED: "batch.expired",
}

# A completion window, as OpenAI writes it: whole hours, "24h".
COMPLETION_WINDOW = re.compile(r"^([1-9][0-9]{0,3})h$")


def window_s(completion_window: str | None) -> int | None:
    """The seconds of a ``completion_window`` such as ``"24h"`` (None: no window)."""
    if not completion_window:
        return None
    return int(COMPLETION_WINDOW.match(completion_window).group(1)) * 3600


def check_transition(batch_id: str, before: BatchStatus, to: BatchStatus) -> None:
    """Raise :class:`IllegalTransition` unless the table allows ``before -> to``."""
    if to not in BATCH_TRANSITIONS[before]:
        raise IllegalTransition(f"batch {batch_id} is {before.value} and cannot become {to.value}",
                                details={"status": before.value})


RUNNING_CHUNK = "run:"  # a batch hash field per chunk running now: "run:<index>" -> when it started


@dataclass
class Batch:
    """A batch as stored: immutable ``meta`` plus the fields that change (status, counters, times)."""

    id: str
    tenant: str
    model: str
    type: JobType
    priority: Priority
    pool: str
    total: int
    created_at: float
    status: BatchStatus = BatchStatus.VALIDATING
    completed: int = 0
    failed: int = 0
    chunks: int = 0
    input_tokens: int = 0  # the usage of the lines that succeeded (their results' prompt tokens)
    output_tokens: int = 0  # and their generated tokens
    started_at: float | None = None
    finished_at: float | None = None
    # When each chunk running now started (a dead worker's chunk stays until its message comes back), and when the
    # last chunk still running at a cancel or expiry stored its results.
    chunks_running_since: tuple[float, ...] = ()
    settled_at: float | None = None
    webhook: dict | None = None
    metadata: dict = field(default_factory=dict)
    input_file_id: str | None = None
    endpoint: str | None = None  # set for batches made through /v1/batches
    completion_window: str | None = None
    retry_of: str | None = None
    request_id: str | None = None
    retried_as: str | None = None  # the batch that retried this one's failed lines (a batch is retried once)
    errors: list = field(default_factory=list)  # batch-level errors (e.g. every line invalid)

    META = ("tenant", "model", "type", "priority", "pool", "total", "created_at", "webhook", "metadata",
            "input_file_id", "endpoint", "completion_window", "retry_of", "request_id")

    def meta_json(self) -> str:
        """The fields that never change, as stored in the hash's ``meta`` field."""
        out = {name: getattr(self, name) for name in self.META}
        out["type"] = self.type.value
        out["priority"] = self.priority.value
        return json.dumps(out, separators=(",", ":"))

    @classmethod
    def from_hash(cls, batch_id: str, raw: dict) -> "Batch":
        """Rebuild a batch from its Redis hash (bytes keys and values)."""
        data = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in raw.items()}
        meta = json.loads(data["meta"])
        meta["type"] = JobType(meta["type"])
        meta["priority"] = Priority(meta["priority"])

        def num(name):
            value = data.get(name)
            return float(value) if value not in (None, "") else None
        return cls(id=batch_id, status=BatchStatus(data["status"]), completed=int(data.get("completed", 0)),
                   failed=int(data.get("failed", 0)), chunks=int(data.get("chunks", 0)),
                   input_tokens=int(data.get("input_tokens", 0)), output_tokens=int(data.get("output_tokens", 0)),
                   started_at=num("started_at"), finished_at=num("finished_at"), settled_at=num("settled_at"),
                   chunks_running_since=tuple(float(v) for k, v in data.items() if k.startswith(RUNNING_CHUNK)),
                   retried_as=data.get("retried_as") or None, errors=json.loads(data.get("errors") or "[]"), **meta)

    def settling(self, chunk_limit_s: float) -> bool:
        """Whether the batch ended (canceled or expired) while a chunk still runs that may store results: one that
        started within ``chunk_limit_s`` (a chunk's hard time limit) of now."""
        return self.status in (BatchStatus.CANCELED, BatchStatus.EXPIRED) and any(
            started > now() - chunk_limit_s for started in self.chunks_running_since)

    @property
    def expires_at(self) -> float | None:
        """When a batch still live becomes ``expired``: ``completion_window`` after it was created (None: never)."""
        seconds = window_s(self.completion_window)
        return None if seconds is None else self.created_at + seconds

    @property
    def request_counts(self) -> dict:
        """``{total, completed, failed}``: lines that succeeded and lines that failed so far."""
        return {"total": self.total, "completed": self.completed, "failed": self.failed}

    @property
    def usage(self) -> dict:
        """``{input_tokens, output_tokens, total_tokens}`` of the lines that succeeded so far."""
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "total_tokens": self.input_tokens + self.output_tokens}

    def to_api(self) -> dict:
        """The contract's batch object."""
        return {
            "id": self.id,
            "object": "batch",
            "status": self.status.value,
            "model": self.model,
            "type": self.type.value,
            "priority": self.priority.value,
            "request_counts": self.request_counts,
            "usage": self.usage,
            "created_at": isoformat(self.created_at),
            "started_at": isoformat(self.started_at),
            "finished_at": isoformat(self.finished_at),
            "completion_window": self.completion_window,
            "expires_at": isoformat(self.expires_at),
            "results_url": f"/batches/{self.id}/results",
            "errors_url": f"/batches/{self.id}/errors",
            "input_file_id": self.input_file_id,
            "retry_of": self.retry_of,
            "retried_as": self.retried_as,
            "metadata": self.metadata,
            "errors": self.errors,
        }

    def to_seed(self) -> dict:
        """The seeds' ``GET /batch/<id>`` shape."""
        status = "processing" if not self.status.terminal else self.status.value
        return {"batch_id": self.id, "status": status, "completed": self.completed, "failed": self.failed,
                "total": self.total, "results_url": f"/batch/{self.id}/results"}

"""A job's events: its status changes and, for a streaming job, its tokens, in one Redis stream per job.

The store appends a ``status`` entry in the same transaction as every status change; the worker running a
streaming job appends a ``token`` entry for each piece of text as it is generated (``{"token", "index"}``, and
``logprobs``, the entries of the tokens it completes, when the job asked for them). Readers (a synchronous call
waiting for its job, an SSE or WebSocket client, ``GET /jobs/<id>/events``) read from the start of the stream, so
nothing that happened before they began reading is missed, and block in ``XREAD`` between entries: no polling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis

from inferno_jobs import blocking
from inferno_jobs.config import Settings
from inferno_jobs.job import Job, JobStatus, now
from inferno_jobs.keyspace import Keyspace

STATUS = "status"
TOKEN = "token"

# Entries kept per job (approximately): a generation longer than this loses its oldest tokens for late readers.
MAX_EVENTS = 20_000


@dataclass(frozen=True)
class Event:
    """One entry of a job's event stream."""

    id: str
    kind: str  # STATUS or TOKEN
    data: dict

    @property
    def terminal(self) -> bool:
        """True for the status change that ends the job (always the last entry)."""
        return self.kind == STATUS and JobStatus(self.data["status"]).terminal


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


class JobEvents:
    """Appends to and reads the event streams of one deployment."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.redis = client
        self.settings = settings
        self.keys = Keyspace(settings.key_prefix)

    def append_status(self, pipe, job: Job, expire_s: int, status: JobStatus | None = None) -> None:
        """Queue, on ``pipe`` (inside the store's transaction), the entry for ``job``'s current status (or
        ``status``, one it passed through in the same change).

        A finished job's stream is kept ``events_retention_s`` (at most ``expire_s``); a live one as long as its
        record.
        """
        key = self.keys.job_events(job.id)
        data = {"id": job.id, "status": (status or job.status).value, "at": now()}
        pipe.xadd(key, {"kind": STATUS, "data": json.dumps(data)}, maxlen=MAX_EVENTS, approximate=True)
        if job.status.terminal:
            expire_s = min(expire_s, self.settings.events_retention_s)
        pipe.expire(key, expire_s)

    def publish_token(self, job_id: str, token: str, index: int, logprobs: list[dict] | None = None) -> None:
        """Append one generated piece of text (``index`` counts from 0), with the log probability entries of the
        tokens it completes when the job asked for ``logprobs``."""
        data = {"token": token, "index": index}
        if logprobs is not None:
            data["logprobs"] = logprobs
        self.redis.xadd(self.keys.job_events(job_id), {"kind": TOKEN, "data": json.dumps(data)},
                        maxlen=MAX_EVENTS, approximate=True)

    def read(self, positions: dict[str, str], block_ms: int) -> list[tuple[str, Event]]:
        """Entries after ``positions`` (job id -> last entry id read, ``"0"`` for the start) of several jobs,
        waiting up to ``block_ms`` for the first one (in XREADs shorter than the client's socket timeout:
        inferno_jobs/blocking.py); ``[(job_id, event)]`` in stream order per job."""
        if not positions:
            return []
        streams = {self.keys.job_events(job_id): last for job_id, last in positions.items()}
        job_of = {self.keys.job_events(job_id): job_id for job_id in positions}
        reply = []
        for wait_s in blocking.slices(self.redis, block_ms / 1000):  # each XREAD within the socket timeout
            reply = self.redis.xread(streams, block=max(1, int(wait_s * 1000)), count=500) or []
            if reply:
                break
        out = []
        for key, entries in reply:
            job_id = job_of[_text(key)]
            for entry_id, fields in entries:
                fields = {_text(k): _text(v) for k, v in fields.items()}
                out.append((job_id, Event(_text(entry_id), fields["kind"], json.loads(fields["data"]))))
        return out

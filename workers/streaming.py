"""A streaming job's hooks into generation: publish each token as it comes, stop when the job is canceled.

A job whose input has ``stream: true`` runs alone (never in a micro-batch, so no job waits on another's tokens)
through :meth:`workers.engine.Engine.stream` with these two callbacks.
"""

from __future__ import annotations

import json
import time

from inferno_jobs.store import JobStore


class JobStream:
    """``on_token`` appends to the job's event stream; ``should_stop`` says whether the job was canceled.

    The cancel check reads the job record at most every ``cancel_check_ms``: one GET, whatever the token rate.
    """

    def __init__(self, store: JobStore, job_id: str):
        self.store = store
        self.job_id = job_id
        self.check_interval_s = max(0, store.settings.cancel_check_ms) / 1000
        self._checked_at = 0.0
        self._stop = False

    def on_token(self, piece: str, index: int, logprobs: list[dict] | None = None) -> None:
        """Publish one piece of generated text (and, for a job that asked for them, the log probability entries
        of the tokens it completes)."""
        self.store.events.publish_token(self.job_id, piece, index, logprobs)

    def should_stop(self) -> bool:
        """True once cancellation was requested, or the job ended elsewhere (timed out by the reconciler)."""
        if self._stop:
            return True
        t = time.monotonic()
        if t - self._checked_at < self.check_interval_s:
            return False
        self._checked_at = t
        raw = self.store.redis.get(self.store.keys.job(self.job_id))
        if raw is None:
            self._stop = True
        else:
            record = json.loads(raw)
            self._stop = bool(record.get("cancel_requested")) or record.get("status") != "running"
        return self._stop

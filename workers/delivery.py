"""The webhook delivery task, served by the ``webhooks`` pool from its own queue (``inferno.webhooks``), so a slow
receiver never holds an inference worker.

Retries use Celery's own ``self.retry(countdown=...)``: the retry is a new message with an ETA, sent before the
current one is acked (at-least-once; a duplicate carries the same ``webhook-id``, which receivers dedupe on).
On Redis a worker holds ETA messages unacked until they are due, and the broker redelivers any message unacked for
longer than ``visibility_timeout_s``; so a countdown never exceeds half of it (``Deliverer.backoff_s``), and
``webhook_retry_cap_s`` bounds the schedule. A worker that stops warm puts its waiting retries back in the queue.
"""

from __future__ import annotations

import threading

from inferno_jobs.apikey import KeyRing
from inferno_jobs.delivery import DELIVER_WEBHOOK, Deliverer
from workers.celery_app import app
from workers.runtime import runtime

_lock = threading.Lock()
_deliverer: Deliverer | None = None


def deliverer() -> Deliverer:
    """This process's :class:`Deliverer` (built on first use: after fork, on the process's own connections)."""
    global _deliverer
    with _lock:
        store = runtime.store
        if _deliverer is None or _deliverer.store is not store:
            _deliverer = Deliverer(store, KeyRing(store.redis, runtime.settings), runtime.settings)
        return _deliverer


@app.task(name=DELIVER_WEBHOOK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def deliver_webhook(self, event: dict, replay_of: int | None = None) -> str:
    """Make one attempt at delivering ``event``; schedule the next one if it failed and may be retried."""
    outcome = deliverer().deliver(event, attempt=self.request.retries + 1, replay_of=replay_of)
    if outcome.retry_in_s is not None:
        raise self.retry(countdown=outcome.retry_in_s)
    return outcome.status

"""Keeps a worker's queue consumers in step with the paused queues (``inferno_jobs/control.py``).

A thread in the worker's main process polls the paused set every second and asks its own node, through Celery's
remote control (executed on the consumer's event loop, so nothing here touches the consumer from another thread),
to ``cancel_consumer`` a paused queue and ``add_consumer`` a resumed one. kombu asks for queues in the order they
were added (``queue_order_strategy=priority``), so resuming a queue also re-adds every lower-priority queue after
it: strict priority holds after any pause and resume.

A node manages only the queues it was started on (its ``-Q``, :func:`node_queues`): the cpu pool's express lane
consumes its high queue alone, and pausing and resuming another queue must not hand it that queue.
"""

from __future__ import annotations

import logging
import threading

from inferno_jobs.queue import pool_queues
from inferno_jobs.store import JobStore

log = logging.getLogger(__name__)


def plan(queues: list[str], consuming: list[str], paused: set[str]) -> tuple[list[str], list[str]]:
    """``(cancel, add)``: the remote-control calls that take a node from ``consuming`` to every queue of
    ``queues`` (highest priority first) that is not paused, in that order."""
    want = [q for q in queues if q not in paused]
    if want == consuming:
        return [], []
    # Keep the longest prefix that is already right; everything after it is cancelled and re-added in order.
    keep = 0
    while keep < min(len(want), len(consuming)) and want[keep] == consuming[keep]:
        keep += 1
    return consuming[keep:], want[keep:]


def node_queues(celery, pool: str) -> list[str]:
    """The queues of ``pool`` that this worker node was started on (``celery worker -Q``), highest priority first.

    Read from Celery's queue selection, so call it before any ``add_consumer``/``cancel_consumer`` changed it
    (at ``worker_ready``). A node started without ``-Q`` consumes them all."""
    selected = celery.amqp.queues.consume_from
    return [queue for queue in pool_queues(pool) if queue in selected]


class ConsumerSync:
    """Runs :func:`plan` against the paused set every ``interval_s`` for one worker node started on ``queues``."""

    def __init__(self, store: JobStore, celery, hostname: str, queues: list[str], interval_s: float = 1.0):
        self.store = store
        self.celery = celery
        self.hostname = hostname
        self.queues = list(queues)
        self.consuming = list(queues)  # the worker starts on every queue of its pool, in priority order
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sync(self) -> tuple[list[str], list[str]]:
        """One pass: cancel and add consumers as the paused set asks; returns what it did."""
        raw = self.store.redis.smembers(self.store.keys.paused_queues())
        paused = {q.decode() if isinstance(q, bytes) else q for q in raw}
        cancel, add = plan(self.queues, self.consuming, paused)
        for queue in cancel:
            self.celery.control.cancel_consumer(queue, destination=[self.hostname], reply=False)
        for queue in add:
            self.celery.control.add_consumer(queue, destination=[self.hostname], reply=False)
        if cancel or add:
            self.consuming = [q for q in self.queues if q not in paused]
            log.info("queue consumers changed", extra={"worker": self.hostname, "stopped": cancel, "started": add})
        return cancel, add

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sync()
            except Exception:  # Redis or the broker may be restarting: try again next tick
                log.exception("queue consumer sync failed")

    def start(self) -> "ConsumerSync":
        try:
            self.sync()
        except Exception:
            log.exception("queue consumer sync failed")
        self._thread = threading.Thread(target=self._run, name="inferno-consumers", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

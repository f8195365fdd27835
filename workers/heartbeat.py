"""Keeps the leases of the jobs a worker process is running alive while it runs them."""

from __future__ import annotations

import threading

from inferno_jobs.store import JobStore


class Heartbeat:
    """A daemon thread that renews ``job_ids``' leases every third of ``lease_s`` until stopped.

    A job whose heartbeat stops (the process died) loses its lease, and the reconciler runs it again.
    """

    def __init__(self, store: JobStore, worker: str, job_ids: list[str]):
        self.store = store
        self.worker = worker
        self.job_ids = job_ids
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inferno-heartbeat", daemon=True)

    def _run(self) -> None:
        interval = max(0.5, self.store.settings.lease_s / 3)
        while not self._stop.wait(interval):
            try:
                self.store.renew(self.job_ids, self.worker)
            except Exception:  # a Redis hiccup must not kill the run; the next beat tries again
                pass

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

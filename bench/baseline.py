"""The baseline: a bare Celery app on the same Redis, with its own queue and a no-op task.

The no-op task only increments a Redis counter, so the producer can tell when N tasks have run without a
result backend. Celery defaults otherwise (early acks, prefetch 4), plus ``task_ignore_result``: the
cheapest Celery there is, the floor every layer of inferno-jobs adds to.

Started as a worker with ``celery -A bench.baseline worker -Q bench.noop``; REDIS_URL names the broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import redis
from celery import Celery

from inferno_jobs.config import Settings

QUEUE = "bench.noop"
COUNTER = "bench-baseline:done"

_settings = Settings.from_env()
app = Celery("bench_baseline", broker=_settings.redis_url)
app.conf.update(task_ignore_result=True, task_default_queue=QUEUE, worker_hijack_root_logger=False,
                broker_connection_retry_on_startup=True)
_client: redis.Redis | None = None


@app.task(name="bench.noop")
def noop() -> None:
    """Count one run."""
    global _client
    if _client is None:  # per pool child, after fork
        _client = redis.Redis.from_url(_settings.redis_url)
    _client.incr(COUNTER)


def producer_rate(redis_url: str, total: int) -> float:
    """``apply_async`` of the no-op task ``total`` times from this process (nothing consumes); tasks/s."""
    producer = Celery("bench_producer", broker=redis_url)
    producer.conf.update(task_ignore_result=True, task_default_queue=QUEUE)
    task = producer.signature("bench.noop")
    for _ in range(50):  # connect and declare before timing
        task.apply_async()
    t0 = time.perf_counter()
    for _ in range(total):
        task.apply_async()
    return total / (time.perf_counter() - t0)


class BaselineWorker:
    """``celery worker`` for the bare app: prefork with the same concurrency as the inferno worker."""

    def __init__(self, env: dict[str, str], concurrency: int, log_path, cwd):
        argv = [sys.executable, "-m", "celery", "-A", "bench.baseline", "worker", "-Q", QUEUE, "--pool", "prefork",
                "--concurrency", str(concurrency), "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
                "-n", f"baseline-{os.getpid()}@bench"]
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


def end_to_end_rate(redis_url: str, total: int, env: dict[str, str], concurrency: int, log_path, cwd) -> float:
    """Tasks/s from the first ``apply_async`` until the worker has run all ``total`` (producer running
    alongside the consumer, as clients and workers run together in production)."""
    client = redis.Redis.from_url(redis_url)
    producer = Celery("bench_producer", broker=redis_url)
    producer.conf.update(task_ignore_result=True, task_default_queue=QUEUE)
    task = producer.signature("bench.noop")
    worker = BaselineWorker(env, concurrency, log_path, cwd)
    try:
        client.set(COUNTER, 0)
        deadline = time.monotonic() + 60
        task.apply_async()
        while int(client.get(COUNTER) or 0) < 1:  # worker up, children forked, connections made
            if worker.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the baseline worker did not start")
            time.sleep(0.05)
        time.sleep(0.5)
        client.set(COUNTER, 0)
        t0 = time.perf_counter()
        for _ in range(total):
            task.apply_async()
        deadline = time.monotonic() + 300
        while int(client.get(COUNTER) or 0) < total:
            if time.monotonic() > deadline:
                raise RuntimeError("the baseline worker did not finish")
            time.sleep(0.005)
        return total / (time.perf_counter() - t0)
    finally:
        worker.stop()
        client.delete(COUNTER, QUEUE)

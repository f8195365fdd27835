"""Starting worker pools: the Celery command line of a cpu pool (with its express lane for high jobs), one
process per GPU for a gpu pool, and a threads pool for webhook delivery (I/O bound: many slow receivers at once,
no model loaded)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from inferno_jobs.config import Settings
from inferno_jobs.job import Priority
from inferno_jobs.queue import pool_queues, queue_name


def celery_argv(pool: str, concurrency: int, hostname: str, loglevel: str = "INFO",
                queues: list[str] | None = None) -> list[str]:
    """``celery worker`` for ``pool``: its three queues in priority order (or only ``queues``), task events on.

    A cpu pool runs ``concurrency`` prefork children; a gpu worker owns one GPU and runs one prefork child, so
    one ONNX Runtime session per GPU serves its micro-batches (and time limits still work: they need prefork).
    A webhooks pool serves ``inferno.webhooks`` with ``concurrency`` threads.
    """
    queues = queues or pool_queues(pool)
    argv = [sys.executable, "-m", "celery", "-A", "workers.tasks", "worker", "-Q", ",".join(queues),
            "-n", hostname, "-E", "--loglevel", loglevel, "--without-gossip", "--without-mingle"]
    if pool == "webhooks":
        return argv + ["--pool", "threads", "--concurrency", str(concurrency)]
    return argv + ["--pool", "prefork", "--concurrency", str(1 if pool == "gpu" else concurrency)]


def cpu_concurrency(settings: Settings) -> int:
    """Worker processes of a cpu pool: the setting, else one per core."""
    return settings.worker_concurrency or os.cpu_count() or 1


def worker_env(settings: Settings, pool: str, concurrency: int, gpu: str | None = None) -> dict[str, str]:
    """The environment of a worker: settings, pool, ONNX threads per process, and its GPU if any."""
    env = dict(os.environ)
    env.update(settings.env())
    env["INFERNO_WORKER_POOL"] = pool
    env["INFERNO_WORKER_CONCURRENCY"] = str(concurrency)
    if pool == "cpu" and not settings.onnx_threads:
        # processes x threads must not exceed the cores, or ONNX Runtime threads fight each other
        env["INFERNO_ONNX_THREADS"] = str(max(1, (os.cpu_count() or 1) // concurrency))
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def pool_specs(settings: Settings, pool: str, gpus: list[str] | None = None, concurrency: int | None = None,
               loglevel: str = "INFO") -> list[tuple[list[str], dict[str, str]]]:
    """``(argv, env)`` of every ``celery worker`` process that makes up ``pool`` on this host."""
    host = socket.gethostname()
    if pool == "gpu":
        gpus = gpus or ["0"]
        return [(celery_argv("gpu", 1, f"gpu{g}@{host}", loglevel), worker_env(settings, "gpu", 1, g)) for g in gpus]
    if pool == "webhooks":
        n = concurrency or settings.webhook_concurrency
        return [(celery_argv("webhooks", n, f"webhooks@{host}", loglevel), worker_env(settings, "webhooks", n))]
    n = concurrency or cpu_concurrency(settings)
    env = worker_env(settings, "cpu", n)
    specs = [(celery_argv("cpu", n, f"cpu@{host}", loglevel), env)]
    if settings.express_workers:
        # The express lane: processes that serve only the high queue, so a high job never waits for the
        # micro-batches of lower priorities that keep every process of the pool busy (docs/architecture.md).
        # Same environment: its ONNX threads are the pool's per-process share.
        specs.append((celery_argv("cpu", settings.express_workers, f"cpu-express@{host}", loglevel,
                                  queues=[queue_name("cpu", Priority.HIGH)]), env))
    return specs


def run_pool(settings: Settings, pool: str, gpus: list[str] | None = None, concurrency: int | None = None,
             loglevel: str = "INFO") -> int:
    """Run a pool in the foreground until it stops or gets SIGINT/SIGTERM; returns the exit code."""
    children = [subprocess.Popen(argv, env=env) for argv, env in pool_specs(settings, pool, gpus, concurrency,
                                                                            loglevel)]

    def forward(signum, _frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)

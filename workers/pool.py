"""Starting worker pools: the Celery command line of a cpu pool, one process per GPU for a gpu pool, and a
threads pool for webhook delivery (I/O bound: many slow receivers at once, no model loaded)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from inferno_jobs.config import Settings
from inferno_jobs.queue import pool_queues


def celery_argv(pool: str, concurrency: int, hostname: str, loglevel: str = "INFO") -> list[str]:
    """``celery worker`` for ``pool``: its three queues in priority order, task events on.

    A cpu pool runs ``concurrency`` prefork children; a gpu worker owns one GPU and runs one prefork child, so
    one ONNX Runtime session per GPU serves its micro-batches (and time limits still work: they need prefork).
    A webhooks pool serves ``inferno.webhooks`` with ``concurrency`` threads.
    """
    queues = pool_queues(pool)
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


def run_pool(settings: Settings, pool: str, gpus: list[str] | None = None, concurrency: int | None = None,
             loglevel: str = "INFO") -> int:
    """Run a pool in the foreground until it stops or gets SIGINT/SIGTERM; returns the exit code."""
    host = socket.gethostname()
    if pool == "gpu":
        gpus = gpus or ["0"]
        specs = [(celery_argv("gpu", 1, f"gpu{g}@{host}", loglevel), worker_env(settings, "gpu", 1, g))
                 for g in gpus]
    elif pool == "webhooks":
        n = concurrency or settings.webhook_concurrency
        specs = [(celery_argv("webhooks", n, f"webhooks@{host}", loglevel), worker_env(settings, "webhooks", n))]
    else:
        n = concurrency or cpu_concurrency(settings)
        specs = [(celery_argv("cpu", n, f"cpu@{host}", loglevel), worker_env(settings, "cpu", n))]
    children = [subprocess.Popen(argv, env=env) for argv, env in specs]

    def forward(signum, _frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)

"""Starting worker pools: the Celery command line of a cpu pool (with its express lane for high jobs), one
process per GPU for a gpu pool, and a threads pool for webhook delivery (I/O bound: many slow receivers at once,
no model loaded)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

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
    """Run a pool in the foreground until it stops or gets SIGINT/SIGTERM; returns the exit code (see
    :func:`supervise`)."""
    return supervise(pool_specs(settings, pool, gpus, concurrency, loglevel))


def supervise(specs: list[tuple[list[str], dict[str, str]]], poll_s: float = 0.2, stop_timeout_s: float = 30) -> int:
    """Start one process per ``(argv, env)`` and wait for them; returns the exit code.

    SIGINT and SIGTERM are passed on to every process, and the code is then the worst of theirs. A process that
    exits by itself (a bad option, a crash) takes the others down with it: they get SIGTERM (SIGKILL after
    ``stop_timeout_s``) and the code is its own (128 + N if signal N killed it), or 1 if it was 0. A pool with a
    part missing (an express lane without its main pool, one GPU of two) must not look alive to whatever
    supervises this process.
    """
    stop_signal: int | None = None
    reached = 0  # how many of ``children`` were there to get it
    children: list[subprocess.Popen] = []

    def forward(signum, _frame):
        nonlocal stop_signal, reached
        stop_signal = signum
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)
        reached = len(children)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        for argv, env in specs:
            if stop_signal is not None:
                break
            children.append(subprocess.Popen(argv, env=env))
        if stop_signal is not None:
            # A signal handled while a process was being started (inside Popen) did not reach it: pass it on.
            for child in children[reached:]:
                child.send_signal(stop_signal)
        while stop_signal is None:
            ended = [child for child in children if child.poll() is not None]
            if ended:  # the others are stopped below
                return _exit_code(ended[0].returncode) or 1
            time.sleep(poll_s)
        # Passed on to every process: each has stop_timeout_s to stop (a Celery shutdown can hang, e.g. retrying a
        # Redis that went first), then SIGKILL; waiting without a bound left them running once this was killed.
        deadline = time.monotonic() + stop_timeout_s
        return max((_exit_code(_wait(child, deadline)) for child in children), default=0)
    finally:
        _stop(children, stop_timeout_s)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _exit_code(returncode: int) -> int:
    """A process's return code as a shell reports it: 128 + N for one killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _stop(children: list[subprocess.Popen], timeout_s: float) -> None:
    """SIGTERM to every process still running, then wait for them (SIGKILL to any still there after
    ``timeout_s``: Celery's warm shutdown finishes its running tasks first)."""
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + timeout_s
    for child in children:
        _wait(child, deadline)


def _wait(child: subprocess.Popen, deadline: float) -> int:
    """``child``'s return code once it exits, SIGKILLed if it is still running at ``deadline``."""
    try:
        return child.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()

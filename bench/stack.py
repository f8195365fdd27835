"""The system under test, started for real: a private redis-server (AOF everysec, as production should run
it), the API under gunicorn (``inferno-jobs api``) and a cpu worker pool (``inferno-jobs worker``), plus
the bare-Celery baseline worker. Never the shared Redis on 6379."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import redis

from inferno_jobs.config import Settings
from inferno_jobs.job import Job, JobStatus
from inferno_jobs.keyspace import Keyspace
from inferno_jobs.queue import pool_queues
from inferno_jobs.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TERMINAL = {s.value for s in JobStatus if s.terminal}


class Service:
    """A child process in its own process group (so the whole tree can be signalled and measured)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def alive(self) -> bool:
        return self.process.poll() is None

    def pids(self) -> list[int]:
        """This service's process and all its descendants."""
        import psutil

        try:
            root = psutil.Process(self.process.pid)
            return [root.pid] + [c.pid for c in root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss(self) -> list[tuple[int, str, int]]:
        """(pid, command, RSS bytes) of every process of this service."""
        import psutil

        out = []
        for pid in self.pids():
            try:
                p = psutil.Process(pid)
                cmd = " ".join(p.cmdline()[1:4])[:60]
                out.append((pid, cmd, p.memory_info().rss))
            except psutil.NoSuchProcess:
                continue
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
        if self.alive():
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        self._log.close()

    def tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]


class Stack:
    """Redis + API + worker for one bench run; parts share it and start what they need."""

    def __init__(self, model_dir: Path, api_workers: int = 2, concurrency: int = 2, workdir: Path | None = None,
                 express_workers: int = 1):
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="inferno-bench-")
        self.workdir = Path(workdir or self._tmp.name)
        self.model_dir = Path(model_dir)
        self.api_workers = api_workers
        self.api_threads = 32  # inferno-jobs api's default
        self.concurrency = concurrency
        self.redis_server = RedisServer(appendonly=True, directory=self.workdir / "redis")
        (self.workdir / "redis").mkdir(parents=True, exist_ok=True)
        self.redis_server.start()
        self.redis = redis.Redis.from_url(self.redis_server.url)
        self.api_port = free_port()
        self.settings = Settings.from_env({}, redis_url=self.redis_server.url, model_dir=self.model_dir,
                                          auth="disabled", key_prefix="bench", api_port=self.api_port,
                                          api_host="127.0.0.1",
                                          # The bench sends the same job thousands of times: with the result cache
                                          # it would measure cache hits, not the queue and the engine.
                                          engine_enable_cache=False, express_workers=express_workers)
        self.keys = Keyspace(self.settings.key_prefix)
        self.api: Service | None = None
        self.worker: Service | None = None
        self._worker_starts = 0

    def env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, **self.settings.env(), "PYTHONPATH": str(ROOT), **extra}
        env.pop("INFERNO_WORKER_CONCURRENCY", None)
        return env

    # -- the API -------------------------------------------------------------------------------------------

    def start_api(self, workers: int | None = None) -> Service:
        """``inferno-jobs api`` (gunicorn) on a free port; waits until /health answers."""
        if self.api and self.api.alive():
            return self.api
        workers = workers or self.api_workers
        argv = [str(BIN / "inferno-jobs"), "api", "--host", "127.0.0.1", "--port", str(self.api_port),
                "--workers", str(workers), "--threads", str(self.api_threads)]
        self.api = Service("api", argv, self.env(), self.workdir / "api.log")
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.api
            except OSError:
                pass
            if not self.api.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start:\n{self.api.tail()}")
            time.sleep(0.1)

    def stop_api(self) -> None:
        if self.api:
            self.api.stop()
            self.api = None

    # -- the worker ----------------------------------------------------------------------------------------

    def start_worker(self) -> Service:
        """``inferno-jobs worker --pool cpu -c N``; waits until its heartbeat is in Redis."""
        if self.worker and self.worker.alive():
            return self.worker
        self._worker_starts += 1
        argv = [str(BIN / "inferno-jobs"), "worker", "--pool", "cpu", "--concurrency", str(self.concurrency),
                "--loglevel", "WARNING"]
        started = time.time()
        self.worker = Service("worker", argv, self.env(), self.workdir / f"worker-{self._worker_starts}.log")
        deadline = time.monotonic() + 90
        while True:
            beats = [json.loads(v) for v in self.redis.hgetall(self.keys.workers()).values()]
            if any(b.get("last_seen", 0) >= started for b in beats):
                return self.worker
            if not self.worker.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start:\n{self.worker.tail()}")
            time.sleep(0.05)

    def stop_worker(self) -> None:
        if self.worker:
            self.worker.stop()
            self.worker = None
            self.redis.delete(self.keys.workers())

    # -- jobs ----------------------------------------------------------------------------------------------

    def pending(self) -> int:
        """Jobs queued or running right now (O(1) per queue: cheap enough to poll)."""
        queued = sum(self.redis.zcard(self.keys.queued(q)) for q in pool_queues("cpu"))
        return queued + self.redis.zcard(self.keys.running_leases())

    def wait_idle(self, timeout_s: float = 300, interval_s: float = 0.05) -> None:
        """Wait until no job is queued or running."""
        deadline = time.monotonic() + timeout_s
        while self.pending():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.pending()} jobs still pending after {timeout_s} s")
            time.sleep(interval_s)

    def jobs(self, ids: list[str]) -> list[Job]:
        """The stored records of ``ids`` (missing ones skipped)."""
        out = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for raw in self.redis.mget([self.keys.job(i) for i in chunk]):
                if raw is not None:
                    out.append(Job.from_dict(json.loads(raw)))
        return out

    def wait_job(self, job_id: str, timeout_s: float = 120) -> Job:
        """Poll one job's record until it is terminal."""
        deadline = time.monotonic() + timeout_s
        key = self.keys.job(job_id)
        while True:
            raw = self.redis.get(key)
            if raw is not None:
                job = Job.from_dict(json.loads(raw))
                if job.status.terminal:
                    return job
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} did not finish within {timeout_s} s")
            time.sleep(0.002)

    def reset(self, *queues: str) -> None:
        """Forget every job record and empty the given Celery queues; the worker must be idle or stopped.

        Not FLUSHDB: kombu keeps its exchange bindings in Redis, and a producer whose bindings vanished
        cannot route messages any more.
        """
        names = list(self.redis.scan_iter(match=f"{self.settings.key_prefix}:*", count=1000))
        for start in range(0, len(names), 1000):
            self.redis.delete(*names[start:start + 1000])
        for queue in queues or pool_queues("cpu"):
            self.redis.delete(queue)

    def close(self) -> None:
        self.stop_worker()
        self.stop_api()
        self.redis_server.close()
        if self._tmp:
            self._tmp.cleanup()

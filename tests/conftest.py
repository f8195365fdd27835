"""Shared fixtures. Unit tests use fakeredis; integration tests start a private redis-server, real Celery worker
processes and real ONNX models (never the shared Redis on 6379)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import fakeredis
import pytest
import redis

from inferno_jobs.config import Settings
from inferno_jobs.queue import pool_queues
from inferno_jobs.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent


class RecordingCelery:
    """Stands in for Celery in unit tests: records what was sent. A new job's message (``message_commands``) counts
    as sent only once its commands ran in the job's transaction, as a real one is published only then: they set a
    marker key in ``redis`` (the app's, given by ``make_app``)."""

    def __init__(self, redis=None):
        self.redis = redis
        self._calls: list[tuple[str | None, dict]] = []  # (marker key of a stored message, or None; the send)
        self.fail = False

    @property
    def sent(self) -> list[dict]:
        return [entry for marker, entry in self._calls
                if marker is None or (self.redis is not None and self.redis.exists(marker))]

    def clear(self) -> None:
        """Forget what was sent so far."""
        self._calls.clear()

    def send_task(self, name, args=None, kwargs=None, **options):
        if self.fail:
            raise ConnectionError("broker unreachable")
        self._calls.append((None, {"name": name, "args": args, "kwargs": kwargs, **options}))

    def message_commands(self, name, **options):
        """As ``workers.message.MessageCollector.commands``: the commands that store the message (here, a marker)."""
        if self.fail:
            raise ConnectionError("broker unreachable")
        marker = f"test-celery:message:{uuid.uuid4().hex}"
        self._calls.append((marker, {"name": name, **options}))
        return [("set", (marker, "1"))]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """The tabular demo models, built once per test session."""
    from inferno_jobs.demo import build_demo

    path = tmp_path_factory.mktemp("models")
    build_demo(path, ["iris", "diabetes"])
    return path


@pytest.fixture(scope="session")
def minilm_dir(model_dir) -> Path:
    """The minilm embedding model, built (about 2 s, no torch) into the shared model directory."""
    from inferno_jobs.demo import minilm

    return minilm.build(model_dir)


@pytest.fixture(scope="session")
def tinygpt_dir(model_dir) -> Path:
    """The tiny-gpt generation model, trained (about 30 s) into the shared model directory."""
    pytest.importorskip("torch", reason="torch is not installed; it is needed to train the tiny-gpt demo model")
    from inferno_jobs.demo import tinygpt

    return tinygpt.build(model_dir)


@pytest.fixture
def settings(model_dir) -> Settings:
    return Settings.from_env({}, model_dir=model_dir, auth="disabled", key_prefix=f"t{uuid.uuid4().hex[:8]}")


@pytest.fixture
def fake_redis():
    return fakeredis.FakeRedis()


@pytest.fixture
def celery_stub() -> RecordingCelery:
    return RecordingCelery()


@pytest.fixture
def make_app(fake_redis, celery_stub, settings):
    """Build an API app on fakeredis; keyword arguments override settings."""
    from api import create_app

    def build(**overrides):
        merged = Settings.from_env({}, **{**settings.__dict__, **overrides})
        celery_stub.redis = fake_redis
        return create_app(merged, redis_client=fake_redis, celery=celery_stub)
    return build


@pytest.fixture
def client(make_app):
    return make_app().test_client()


# -- integration -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def redis_server():
    """A private redis-server for the whole session (AOF on, as production should run it)."""
    server = RedisServer(appendonly=True).start()
    yield server
    server.close()


@pytest.fixture
def live_settings(redis_server, model_dir) -> Settings:
    """Settings pointing at the private Redis, with a key prefix of this test's own."""
    return Settings.from_env({}, redis_url=redis_server.url, model_dir=model_dir, auth="disabled",
                             key_prefix=f"t{uuid.uuid4().hex[:8]}", reconcile_interval_s=1, lease_s=6)


def stop_group(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
    """Signal the process group of ``process`` (started with ``start_new_session=True``), and SIGKILL the group
    if it has not exited within ``timeout_s``."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class WorkerProcess:
    """A real ``celery worker`` process for one pool."""

    def __init__(self, settings: Settings, pool: str = "cpu", concurrency: int = 2, name: str | None = None,
                 extra_env: dict | None = None, queues: list[str] | None = None, celery_pool: str | None = None):
        self.settings = settings
        self.hostname = name or f"{pool}-{uuid.uuid4().hex[:6]}@test"
        env = {**os.environ, **settings.env(), "INFERNO_WORKER_POOL": pool,
               "INFERNO_WORKER_CONCURRENCY": str(concurrency), "INFERNO_ONNX_THREADS": "1",
               "PYTHONPATH": str(ROOT), **(extra_env or {})}
        # A separate broker db would hide nothing: the queues are shared on purpose, so each test flushes them.
        argv = [sys.executable, "-m", "celery", "-A", "workers.tasks", "worker", "-Q",
                ",".join(queues or pool_queues(pool)), "-n", self.hostname, "-E", "--loglevel", "INFO",
                "--pool", celery_pool or ("threads" if pool == "webhooks" else "prefork"), "--concurrency",
                str(concurrency), "--without-gossip", "--without-mingle"]
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"inferno-worker-{self.hostname}.log"
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def wait_ready(self, timeout_s: float = 60) -> "WorkerProcess":
        """Wait until the worker's heartbeat appears in Redis."""
        client = redis.Redis.from_url(self.settings.redis_url)
        key = f"{self.settings.key_prefix}:workers"
        deadline = time.monotonic() + timeout_s
        while not client.hexists(key, self.hostname):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        return self

    def children(self) -> list[int]:
        """Pids of the prefork pool children."""
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self, sig=signal.SIGTERM, timeout_s: float = 30) -> None:
        stop_group(self.process, sig, timeout_s)
        self.log.close()


@pytest.fixture
def start_worker(live_settings):
    """Start real worker processes; all are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(settings: Settings | None = None, **kwargs) -> WorkerProcess:
        worker = WorkerProcess(settings or live_settings, **kwargs)
        started.append(worker)
        return worker.wait_ready()
    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def live_redis(redis_server, live_settings):
    """A client of the private Redis; the Celery queues are emptied after each test."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.flushdb()


@pytest.fixture
def live_app(live_settings, live_redis):
    """The API app on the private Redis with a real Celery producer."""
    from api import create_app

    return create_app(live_settings, redis_client=live_redis)


@pytest.fixture
def api(live_app):
    return live_app.test_client()


def wait_for(predicate, timeout_s: float = 30, interval_s: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)

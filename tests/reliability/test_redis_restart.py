"""Accepted jobs survive a Redis restart: 500 jobs accepted with no worker running, Redis stopped and started
again on the same port and directory (AOF on, ``appendfsync everysec``), then a worker runs all 500.

``appendfsync everysec`` may lose up to one second of writes when Redis crashes: a clean SHUTDOWN (SIGTERM)
writes everything, and a SIGKILL loses nothing only if it comes more than a second after the last write.
Both are tested; a SIGKILL right after the last write could lose the newest jobs, as Redis documents.
"""

from __future__ import annotations

import signal
import time

import pytest
import redis

from inferno_jobs.config import Settings
from inferno_jobs.redis_server import RedisServer, free_port
from inferno_jobs.store import JobStore
from tests.reliability.conftest import submit_many, wait_all_terminal

pytestmark = pytest.mark.integration

JOBS = 500


@pytest.mark.parametrize("how", ["shutdown", "sigkill-after-2s"])
def test_500_accepted_jobs_survive_a_redis_restart(tmp_path, model_dir, start_worker, how):
    from api import create_app

    server = RedisServer(port=free_port(), directory=tmp_path, appendonly=True).start()
    try:
        settings = Settings.from_env({}, redis_url=server.url, model_dir=model_dir, auth="disabled",
                                     key_prefix="restart", reconcile_interval_s=1, lease_s=6,
                                     engine_enable_cache=False)
        api = create_app(settings, redis_client=redis.Redis.from_url(server.url)).test_client()
        ids = submit_many(api, {"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}},
                          JOBS)
        if how == "shutdown":
            server.stop()  # SIGTERM: redis-server shuts down cleanly and fsyncs the AOF
        else:
            time.sleep(2)  # past appendfsync everysec's window
            server.process.send_signal(signal.SIGKILL)
            server.process.wait()
        server.start()  # same port, same directory: the AOF is replayed

        store = JobStore(redis.Redis.from_url(server.url), settings)
        assert [store.get(i).status.value for i in ids] == ["queued"] * JOBS
        assert sum(store.queue_depth(q) for q in ("inferno.cpu.normal",)) == JOBS

        start_worker(settings)
        jobs = wait_all_terminal(store, ids, timeout_s=90)
        assert [j.status.value for j in jobs] == ["succeeded"] * JOBS
        assert all(len(j.attempts) == 1 for j in jobs)
    finally:
        server.close()

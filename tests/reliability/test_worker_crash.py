"""Workers dying mid-run lose no job: a SIGKILL of the whole worker (main process and pool children) and
repeated SIGKILLs of pool children, each with 200 jobs in flight. Real redis-server, real Celery workers."""

from __future__ import annotations

import os
import signal
import time

import pytest

from inferno_jobs.config import Settings
from inferno_jobs.store import JobStore
from tests.conftest import wait_for
from tests.reliability.conftest import submit_many, wait_all_terminal

pytestmark = pytest.mark.integration

JOBS = 200


def test_sigkill_of_the_whole_worker_with_200_jobs_in_flight_loses_none(
        redis_server, model_dir, medium_model, live_redis, start_worker):
    """Every job reaches ``succeeded`` once a new worker starts; the ones running at the kill record a
    ``worker_lost`` attempt and are taken over after their lease (6 s) ran out.

    A job whose message the killed worker had taken from Redis but not yet claimed has no message any more
    (kombu may lose a message taken in that window): the reconciler sends a queued job whose message is older
    than ``resend_after_s`` (20 s here) again, so that job runs too.
    """
    from api import create_app

    settings = Settings.from_env({}, redis_url=redis_server.url, model_dir=model_dir, auth="disabled",
                                 key_prefix="crash-all", reconcile_interval_s=1, lease_s=6, visibility_timeout_s=20,
                                 resend_after_s=20, engine_enable_cache=False)
    api = create_app(settings, redis_client=live_redis).test_client()
    store = JobStore(live_redis, settings)
    worker = start_worker(settings)
    ids = submit_many(api, {"type": "predict", "model": medium_model, "input": {"features": [[1, 2, 3, 4]]}}, JOBS)
    wait_for(lambda: sum(store.get(i).status.value == "succeeded" for i in ids[:60]) >= 20, 60)
    # Killed at a moment a job runs: sampled until one does (both children may be between jobs at one instant).
    running_at_kill = wait_for(lambda: set(store.running()), 10, interval_s=0.001)
    worker.stop(signal.SIGKILL)  # os.killpg: the main process, its pool children, everything at once
    assert running_at_kill, "no job was running when the worker was killed"
    finished_at_kill = sum(store.get(i).status.terminal for i in ids)
    assert finished_at_kill < JOBS, "every job had finished before the kill: nothing was in flight"

    start_worker(settings)
    jobs = wait_all_terminal(store, ids, timeout_s=90)
    assert [j.status.value for j in jobs] == ["succeeded"] * JOBS
    assert all(j.result == {"predictions": [10.0]} for j in jobs)
    taken_over = [j for j in jobs if len(j.attempts) > 1]
    assert taken_over, "no job recorded the lost worker"
    for job in taken_over:
        assert [a.outcome for a in job.attempts] == ["worker_lost"] * (len(job.attempts) - 1) + ["succeeded"]


def test_repeated_sigkill_of_pool_children_with_200_jobs_running_all_succeed(
        api, live_settings, live_redis, medium_model, start_worker):
    """Children killed one after another, each while it runs a job: the message comes back
    (``task_reject_on_worker_lost``), the next child takes the job over, and all 200 succeed.

    Each job is hit at most once (the victim is the owner of a job on its first attempt): a job whose worker
    is lost ``max_attempts`` times fails on purpose, and that is not what this test is about.
    """
    store = JobStore(live_redis, live_settings)
    worker = start_worker()
    ids = submit_many(api, {"type": "predict", "model": medium_model, "input": {"features": [[1, 2, 3, 4]]}}, JOBS)
    kills, victims = 0, set()
    deadline = time.monotonic() + 60
    while kills < 8 and time.monotonic() < deadline:
        if sum(store.get(i).status.terminal for i in ids) >= JOBS - 20:
            break
        children = set(worker.children())
        for job_id in store.running():
            job = store.get(job_id)
            pid = int(job.lease_owner.rsplit(":", 1)[1]) if job.lease_owner else None
            if job.status.value == "running" and len(job.attempts) == 1 and pid in children \
                    and job_id not in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                kills += 1
                victims.add(job_id)
                break
        time.sleep(0.3)
    assert kills >= 3, f"only {kills} children were killed mid-job"

    jobs = wait_all_terminal(store, ids, timeout_s=90)
    assert [j.status.value for j in jobs] == ["succeeded"] * JOBS
    lost = [j for j in jobs if any(a.outcome == "worker_lost" for a in j.attempts)]
    assert lost, "no attempt was recorded as worker_lost"
    assert all(j.attempts[-1].outcome == "succeeded" for j in jobs)
    assert worker.process.poll() is None, "the worker's main process must survive its children's deaths"

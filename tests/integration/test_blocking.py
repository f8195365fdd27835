"""Waits longer than the Redis client's socket timeout (redis-py 8: 5 s unless the URL sets one) are made of
several shorter blocking commands (inferno_jobs/blocking.py): a synchronous call that runs out of time answers
504, a stream follows its job to the end, a validation nobody answers is a 504, never a 500.

The client here has a 0.4 s socket timeout so that each wait outlives it within a second or two."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from api import create_app
from inferno_jobs.config import Settings
from inferno_jobs.job import JobStatus
from inferno_jobs.store import JobStore

pytestmark = pytest.mark.integration

IRIS = {"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}}


@pytest.fixture
def short_timeout(redis_server, live_settings):
    """(settings, a Redis client with a 0.4 s socket timeout); nothing consumes the queues."""
    settings = Settings.from_env({}, **{**live_settings.__dict__, "sync_wait_s": 1})
    client = redis.Redis.from_url(redis_server.url, socket_timeout=0.4)
    yield settings, client
    client.close()


@pytest.fixture
def api(short_timeout):
    settings, client = short_timeout
    return create_app(settings, redis_client=client).test_client()


def test_a_synchronous_call_that_runs_out_of_time_answers_504(api):
    started = time.monotonic()
    r = api.post("/predict", json={"model": "iris", "features": [[5.1, 3.5, 1.4, 0.2]]})
    assert r.status_code == 504, r.get_json()
    assert r.get_json()["error"]["code"] == "TIMEOUT" and time.monotonic() - started >= 1


def test_an_event_stream_follows_a_job_that_ends_after_the_socket_timeout(api, short_timeout):
    settings, client = short_timeout
    job_id = api.post("/jobs", json=IRIS).get_json()["id"]
    store = JobStore(client, settings)

    def run_later():
        time.sleep(1.2)
        store.claim(job_id, "w:1")
        store.finish(job_id, JobStatus.SUCCEEDED, result={"predictions": [0]})
    worker = threading.Thread(target=run_later)
    worker.start()
    body = api.get(f"/jobs/{job_id}/events").get_data(as_text=True)  # the stream ends with the job
    worker.join()
    assert '"status":"succeeded"' in body.replace(" ", ""), body


def test_a_validation_no_worker_answers_is_a_504(api, monkeypatch):
    import json

    from api import models as model_routes
    from inferno_jobs.job import now

    monkeypatch.setattr(model_routes, "VALIDATE_WAIT_S", 1)
    svc = api.application.extensions["inferno"]
    # A cpu worker's heartbeat, and no process behind it: the validation's message is never taken.
    svc.redis.hset(svc.store.keys.workers(), "cpu@ghost", json.dumps(
        {"hostname": "cpu@ghost", "pool": "cpu", "queues": [], "last_seen": now()}))
    r = api.post("/models/iris/validate")
    assert r.status_code == 504 and r.get_json()["error"]["code"] == "TIMEOUT", r.get_json()

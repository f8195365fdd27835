"""Webhooks end to end: API -> Redis -> cpu worker runs the job -> outbox -> webhooks-pool worker (threads) ->
a real receiver that verifies every delivery with the ``standardwebhooks`` library."""

from __future__ import annotations

import dataclasses

import pytest
from standardwebhooks import Webhook

from api import create_app
from tests.conftest import wait_for
from tests.unit.test_webhooks import IRIS, SECRET, Receiver

pytestmark = pytest.mark.integration


@pytest.fixture
def hook_settings(live_settings):
    return dataclasses.replace(live_settings, webhook_secret=SECRET, webhook_allowed_networks=("127.0.0.0/8",),
                               webhook_retry_base_ms=50, webhook_timeout_s=2)


@pytest.fixture
def hook_api(hook_settings, live_redis):
    return create_app(hook_settings, redis_client=live_redis).test_client()


@pytest.fixture
def rx():
    receivers = []

    def start(**kwargs) -> Receiver:
        receivers.append(Receiver(**kwargs))
        return receivers[-1]
    yield start
    for r in receivers:
        r.close()


def test_a_predict_job_calls_its_webhook_with_the_result(hook_api, hook_settings, start_worker, rx):
    receiver = rx()
    start_worker(hook_settings)
    start_worker(hook_settings, pool="webhooks", queues=["inferno.webhooks"], concurrency=4)
    job = hook_api.post("/jobs", json={**IRIS, "webhook_url": receiver.url}).get_json()
    wait_for(lambda: receiver.requests, timeout_s=30)
    [got] = receiver.requests
    assert got["verified"]
    assert got["payload"]["type"] == "job.succeeded"
    data = got["payload"]["data"]
    assert data["id"] == job["id"] and data["status"] == "succeeded" and data["result"]["predictions"]
    assert data == {**hook_api.get(f"/jobs/{job['id']}").get_json(), "queue_position": None}
    log = wait_for(lambda: hook_api.get(f"/jobs/{job['id']}/deliveries").get_json()["data"])
    assert [(e["attempt"], e["status_code"], e["outcome"]) for e in log] == [(1, 200, "delivered")]
    assert log[0]["webhook_id"] == got["headers"]["webhook-id"]


def test_retries_through_celery_keep_one_webhook_id_and_replay_reuses_it(hook_api, hook_settings, start_worker,
                                                                         rx):
    # No cpu worker: the job stays queued, and canceling it emits job.canceled from the API.
    receiver = rx(script=[(500, {}), (502, {}), (503, {"Retry-After": "1"}), (200, {})])
    start_worker(hook_settings, pool="webhooks", queues=["inferno.webhooks"], concurrency=4)
    job = hook_api.post("/jobs", json={**IRIS, "webhook_url": receiver.url}).get_json()
    assert hook_api.post(f"/jobs/{job['id']}/cancel").get_json()["status"] == "canceled"
    wait_for(lambda: len(receiver.requests) >= 4, timeout_s=20)
    assert len(set(receiver.ids())) == 1 and all(r["verified"] for r in receiver.requests)
    assert receiver.requests[0]["payload"]["type"] == "job.canceled"
    log = wait_for(lambda: (lambda d: d if len(d) == 4 else None)(
        hook_api.get(f"/jobs/{job['id']}/deliveries").get_json()["data"]))
    assert [(e["attempt"], e["status_code"], e["outcome"]) for e in log] == [
        (1, 500, "retrying"), (2, 502, "retrying"), (3, 503, "retrying"), (4, 200, "delivered")]
    assert hook_api.post(f"/jobs/{job['id']}/deliveries/4/replay").status_code == 202
    wait_for(lambda: len(receiver.requests) == 5, timeout_s=10)
    assert len(set(receiver.ids())) == 1 and receiver.requests[4]["verified"]


def test_a_replay_after_the_job_was_retried_sends_the_expired_event_byte_for_byte(hook_api, hook_settings,
                                                                                  start_worker, rx):
    # No cpu worker: the job is never taken and the webhooks worker's reconciler expires it.
    receiver = rx()
    start_worker(hook_settings, pool="webhooks", queues=["inferno.webhooks"], concurrency=4)
    job = hook_api.post("/jobs", json={**IRIS, "priority": "low", "ttl_s": 1, "webhook_url": receiver.url}).get_json()
    [first] = wait_for(lambda: receiver.requests[:1], timeout_s=30)
    assert first["verified"] and first["payload"]["type"] == "job.expired"
    assert first["payload"]["data"]["status"] == "expired"
    retried = hook_api.post(f"/jobs/{job['id']}/retry")
    assert retried.status_code == 202 and retried.get_json()["status"] == "queued"
    assert hook_api.post(f"/jobs/{job['id']}/deliveries/1/replay").status_code == 202

    webhook_id = first["headers"]["webhook-id"]
    same = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(
        [r for r in receiver.requests if r["headers"]["webhook-id"] == webhook_id]), timeout_s=20)
    replayed = same[1]
    assert Webhook(SECRET).verify(replayed["body"], replayed["headers"])["data"]["status"] == "expired"
    assert replayed["body"] == first["body"]

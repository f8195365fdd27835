"""A new job's Celery message is stored with the job, in one transaction (workers/message.py), on a real Redis."""

from __future__ import annotations

import base64
import json

import pytest
from celery.signals import before_task_publish

from inferno_jobs.config import Settings
from inferno_jobs.job import Job, JobType, Priority
from inferno_jobs.queue import queue_name
from inferno_jobs.store import JobStore
from workers.celery_app import RUN_JOB, enqueue, make_celery, run_job_commands

pytestmark = pytest.mark.integration

# Unique to each publish. A trace context (OpenTelemetry's Celery instrumentation, once another test of the session
# set it up) is one too: a new span per message.
IDS = {"id", "root_id", "correlation_id", "delivery_tag", "traceparent", "tracestate"}


def _job(priority=Priority.HIGH) -> Job:
    return Job.create(type=JobType.PREDICT, model="iris", tenant="t1", input={"features": [[1, 2, 3, 4]]},
                      priority=priority, pool="cpu", ttl_s=60, timeout_s=30, request_id="req_1")


def _pop(redis_client, queue: str) -> dict:
    envelope = json.loads(redis_client.rpop(queue))
    envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
    return envelope


def _without_ids(value):
    if isinstance(value, dict):
        return {k: _without_ids(v) for k, v in value.items() if k not in IDS}
    return value


def test_the_stored_message_is_the_one_send_task_publishes(live_settings, live_redis):
    celery = make_celery(live_settings)
    job = _job()
    queue = queue_name(job.pool, job.priority)
    enqueue(celery, job)  # Celery and kombu publishing as usual
    sent = _pop(live_redis, queue)
    with live_redis.pipeline() as pipe:
        for name, args in run_job_commands(celery, job):
            getattr(pipe, name)(*args)
        pipe.execute()
    stored = _pop(live_redis, queue)
    assert _without_ids(stored) == _without_ids(sent)
    assert ("traceparent" in stored["headers"]) == ("traceparent" in sent["headers"])
    assert stored["headers"]["task"] == RUN_JOB and stored["body"][0] == [job.id]
    assert stored["headers"]["timelimit"] == [job.timeout_s + 15, job.timeout_s]
    assert stored["headers"]["job_id"] == job.id and stored["properties"]["delivery_info"]["routing_key"] == queue
    assert stored["headers"]["id"] != sent["headers"]["id"]  # a task id of its own, as every publish has
    assert live_redis.llen(queue) == 0


def test_publish_signals_still_fire_so_tracing_sees_the_message(live_settings, live_redis):
    seen = []

    def on_publish(sender=None, headers=None, **kwargs):
        headers["traceparent"] = "00-trace-span-01"  # what OpenTelemetry's Celery instrumentation does
        seen.append(sender)

    before_task_publish.connect(on_publish)
    try:
        commands = run_job_commands(make_celery(live_settings), _job())
    finally:
        before_task_publish.disconnect(on_publish)
    assert seen == [RUN_JOB]
    name, (key, payload) = commands[0]
    assert name == "lpush" and json.loads(payload)["headers"]["traceparent"] == "00-trace-span-01"


def test_a_job_and_its_message_are_stored_together_or_not_at_all(live_settings, live_redis):
    celery = make_celery(live_settings)
    store = JobStore(live_redis, live_settings)
    job = _job(Priority.LOW)
    queue = queue_name(job.pool, job.priority)
    created, _ = store.create(job, publish=lambda j: run_job_commands(celery, j))
    assert live_redis.llen(queue) == 1 and _pop(live_redis, queue)["body"][0] == [created.id]

    def broken(j):
        raise ConnectionError("broker unreachable")

    other = _job(Priority.LOW)
    with pytest.raises(ConnectionError):
        store.create(other, publish=broken)
    assert live_redis.llen(queue) == 0 and not live_redis.exists(store.keys.job(other.id))
    assert store.queue_position(store.get(created.id)) == 0  # the first job only: nothing of the second is kept


def test_with_sent_events_on_the_task_sent_event_goes_out_in_the_same_transaction(live_settings, live_redis):
    celery = make_celery(Settings.from_env({}, **{**live_settings.__dict__, "task_sent_events": True}))
    job = _job()
    events = live_redis.pubsub()
    events.psubscribe("*celeryev*")
    events.get_message(timeout=1)  # the subscription's confirmation
    commands = run_job_commands(celery, job)
    assert [name for name, _ in commands] == ["lpush", "publish"]
    assert events.get_message(timeout=0.2) is None  # nothing is sent before the transaction runs
    with live_redis.pipeline() as pipe:
        for name, args in commands:
            getattr(pipe, name)(*args)
        pipe.execute()
    sent = json.loads(events.get_message(timeout=2)["data"])
    event = json.loads(base64.b64decode(sent["body"]))
    stored = _pop(live_redis, queue_name(job.pool, job.priority))
    assert event["type"] == "task-sent" and event["uuid"] == stored["headers"]["id"]
    assert event["queue"] == queue_name(job.pool, job.priority)
    events.close()

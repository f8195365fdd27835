"""Run messages as tickets for their queue (inferno_jobs/tickets.py), with Celery's real messages on a real Redis."""

from __future__ import annotations

import base64
import json
import shutil

import pytest

from inferno_jobs.config import Settings
from inferno_jobs.job import Job, JobStatus, JobType, Priority
from inferno_jobs.model import ModelRepository
from inferno_jobs.queue import queue_name
from inferno_jobs.store import JobStore
from workers.batching import BatchRunner
from workers.celery_app import make_celery, run_job_commands
from workers.engine import Engine
from workers.reconciler import Reconciler

pytestmark = pytest.mark.integration

QUEUE = queue_name("cpu", Priority.NORMAL)


@pytest.fixture
def setup(live_settings, live_redis, model_dir, tmp_path):
    """A store whose queues let one message wait, and iris as ``iris-b3`` (micro-batches of at most 3)."""
    shutil.copytree(model_dir / "iris", tmp_path / "iris-b3")
    config = json.loads((tmp_path / "iris-b3" / "config.json").read_text())
    (tmp_path / "iris-b3" / "config.json").write_text(json.dumps({**config, "max_batch_size": 3}))
    settings = Settings.from_env({}, **{**live_settings.__dict__, "max_waiting_messages": 1, "model_dir": tmp_path})
    celery = make_celery(settings)
    store = JobStore(live_redis, settings)

    def runner() -> BatchRunner:  # what a worker builds for each message
        return BatchRunner(store, Engine(settings).run, model_config=ModelRepository(tmp_path).get,
                           message_of=lambda job: run_job_commands(celery, job))
    return settings, celery, store, runner


def _submit(store, celery, n: int) -> list[Job]:
    jobs = []
    for _ in range(n):
        job = Job.create(type=JobType.PREDICT, model="iris-b3", tenant="t1", input={"features": [[5.1, 3.5, 1.4, 0.2]]},
                         priority=Priority.NORMAL, pool="cpu", ttl_s=60, timeout_s=30)
        jobs.append(store.create(job, publish=lambda j: run_job_commands(celery, j))[0])
    return jobs


def _take(live_redis) -> str:
    """Take the next message of the queue as a worker would; returns the job id it is labelled with."""
    envelope = json.loads(live_redis.rpop(QUEUE))
    return json.loads(base64.b64decode(envelope["body"]))[0][0]


def test_a_queue_keeps_a_message_waiting_while_it_has_jobs_not_one_per_job(setup, live_redis):
    settings, celery, store, runner = setup
    jobs = _submit(store, celery, 5)
    assert live_redis.llen(QUEUE) == 1  # one message waits; the other four jobs need none of their own
    assert all(store.get(j.id).status is JobStatus.QUEUED for j in jobs)

    # Its worker finds it was the last one waiting: it claims a micro-batch (3) and passes a message on for the rest.
    first = runner().run(_take(live_redis), QUEUE)
    assert len(first) == 3 and live_redis.llen(QUEUE) == 1
    # The next takes the last two; the queue is empty then, so it sends none.
    second = runner().run(_take(live_redis), QUEUE)
    assert len(second) == 2 and live_redis.llen(QUEUE) == 0
    assert sorted(j.id for j in first + second) == sorted(j.id for j in jobs)
    assert all(store.get(j.id).status is JobStatus.SUCCEEDED for j in jobs)

    # A new job finds no message waiting: one is sent. (This store last saw one waiting, so it did not build the
    # job's message beforehand: the script's reply asks for it, and it is sent right after the job is stored.)
    assert not store.outlook.worth_building(QUEUE)
    _submit(store, celery, 1)
    assert live_redis.llen(QUEUE) == 1


def test_the_reconciler_sends_a_message_to_a_queue_left_without_one(setup, live_redis):
    settings, celery, store, runner = setup
    jobs = _submit(store, celery, 4)
    live_redis.delete(QUEUE)  # the waiting message is lost (a crashed worker had taken it)
    sent = []
    reconciler = Reconciler(store, sent.append, hostname="w@test", pool="cpu", queues=[QUEUE], celery=celery)
    counts = reconciler.tick()
    assert counts["messages"] == 1 and [job.id for job in sent] == [jobs[0].id]  # the queue's oldest job labels it
    # A queue whose message waits gets none.
    for name, args in run_job_commands(celery, jobs[0]):
        getattr(live_redis, name)(*args)
    live_redis.delete(store.keys.reconcile_lock())  # the next tick may run at once
    assert reconciler.tick()["messages"] == 0 and len(sent) == 1


def test_with_no_limit_every_job_stores_its_message(live_settings, live_redis):
    settings = Settings.from_env({}, **{**live_settings.__dict__, "max_waiting_messages": 0})
    celery = make_celery(settings)
    _submit(JobStore(live_redis, settings), celery, 3)
    assert live_redis.llen(QUEUE) == 3


def test_stale_jobs_get_one_message_per_queue_and_a_follower_its_own(setup, live_redis):
    settings, celery, _, _ = setup
    store = JobStore(live_redis, Settings.from_env({}, **{**settings.__dict__, "resend_after_s": 0}))  # all stale
    jobs = _submit(store, celery, 5)
    follower = Job.create(type=JobType.PREDICT, model="iris-b3", tenant="t1", input={"features": [[5.1, 3.5, 1.4, 0.2]]},
                          priority=Priority.NORMAL, pool="cpu", ttl_s=60, timeout_s=30)
    follower.shared_run_of = jobs[0].id  # it waits for an identical job's run (docs/cache.md), outside the order
    follower = store.create(follower)[0]
    assert follower.shared_run_of == jobs[0].id
    sent = []
    counts = Reconciler(store, sent.append, hostname="w@test", pool="cpu", queues=[QUEUE], celery=celery).tick()
    # Five stale jobs of one queue: one message for the queue. The follower: one of its own, so it runs alone.
    assert counts["resent"] == 2 and sorted(j.id for j in sent) == sorted([jobs[0].id, follower.id])
    assert counts["messages"] == 0  # the queue's first message still waits: not starved

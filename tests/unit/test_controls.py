"""Queue and job controls: retry (the one exception to terminal states), pause/resume/purge, /queues, /workers;
fair share between tenants in the claim order."""

import json

import pytest

from inferno_jobs.apikey import KeyRing
from inferno_jobs.errors import IllegalTransition
from inferno_jobs.job import Job, JobStatus, JobType, Priority, now, retry, transition
from inferno_jobs.metrics import record_worker_jobs
from inferno_jobs.store import JobStore
from workers.batching import BatchRunner
from workers.consumers import node_queues, plan

IRIS = {"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}}
LOW = "inferno.cpu.low"


def job(tenant="t", priority=Priority.LOW) -> Job:
    return Job.create(type=JobType.PREDICT, model="iris", tenant=tenant, input={"features": [[1, 2, 3, 4]]},
                      priority=priority)


def test_retry_reopens_only_failed_expired_or_timed_out_jobs():
    j = job()
    transition(j, JobStatus.RUNNING, worker="w:1")
    transition(j, JobStatus.FAILED, error={"code": "INFERENCE_FAILED", "message": "x"})
    retry(j)
    assert j.status is JobStatus.QUEUED and j.error is None and j.finished_at is None
    assert [a.outcome for a in j.attempts] == ["failed"]  # the history is kept
    assert j.expires_at > now() + j.ttl_s - 5  # its ttl counts from the retry
    transition(j, JobStatus.RUNNING, worker="w:2")
    transition(j, JobStatus.SUCCEEDED, result={"ok": 1})
    assert len(j.attempts) == 2
    with pytest.raises(IllegalTransition):
        retry(j)  # succeeded stays succeeded
    queued = job()
    with pytest.raises(IllegalTransition):
        retry(queued)


def test_store_retry_restores_every_queued_index(fake_redis, settings):
    store = JobStore(fake_redis, settings)
    j = store.create(job())[0]
    store.claim(j.id, "w:1")
    store.finish(j.id, JobStatus.TIMED_OUT, error={"code": "TIMEOUT", "message": "slow"})
    active = store.keys.tenant_active("t")  # the tenant's concurrency index
    assert store.queue_depth(LOW) == 0 and fake_redis.zcard(active) == 0
    again = store.retry(j.id, "t")
    assert again.status is JobStatus.QUEUED and store.get(j.id).attempts[0].outcome == "timed_out"
    assert store.queue_depth(LOW) == 1 and store.next_queued(LOW, 5) == [j.id]
    assert store.waiting("iris", 5) == [j.id] and fake_redis.zcard(active) == 1
    assert store.queue_position(again) == 0
    assert store.claim(j.id, "w:2").attempts[-1].worker == "w:2"


def test_retry_through_the_api(client, celery_stub, make_app, fake_redis):
    created = client.post("/jobs", json=IRIS).get_json()
    assert client.post(f"/jobs/{created['id']}/retry").status_code == 409  # still queued
    store = client.application.extensions["inferno"].store
    store.claim(created["id"], "w:1")
    store.finish(created["id"], JobStatus.FAILED, error={"code": "INFERENCE_FAILED", "message": "boom"})
    r = client.post(f"/jobs/{created['id']}/retry")
    assert r.status_code == 202
    body = r.get_json()
    assert body["id"] == created["id"] and body["status"] == "queued" and body["attempts"] == 1
    assert body["error"] is None and body["queue_position"] == 0
    assert [s["args"] for s in celery_stub.sent] == [[created["id"]], [created["id"]]]  # a new message
    assert celery_stub.sent[-1]["kwargs"]["model"] == "iris"
    assert client.post("/jobs/job_nope/retry").status_code == 404


def test_pause_resume_purge_and_queues(client, fake_redis):
    ids = [client.post("/jobs", json={**IRIS, "priority": "low"}).get_json()["id"] for _ in range(3)]
    queues = {q["name"]: q for q in client.get("/queues").get_json()["queues"]}
    assert queues[LOW]["depth"] == 3 and queues[LOW]["paused"] is False
    assert queues[LOW]["oldest_job_age_s"] >= 0 and queues["inferno.cpu.high"]["oldest_job_age_s"] is None
    paused = client.post(f"/queues/{LOW}/pause").get_json()
    assert paused["queue"]["paused"] is True and paused["queue"]["consumers"] == 0
    assert {q["name"]: q for q in client.get("/queues").get_json()["queues"]}[LOW]["paused"] is True
    assert client.post(f"/queues/{LOW}/resume").get_json()["queue"]["paused"] is False
    purged = client.post(f"/queues/{LOW}/purge").get_json()
    assert purged["canceled"] == 3 and sorted(purged["canceled_job_ids"]) == sorted(ids)
    for job_id in ids:  # canceled, never silently dropped
        got = client.get(f"/jobs/{job_id}").get_json()
        assert got["status"] == "canceled" and "purged" in got["error"]["message"]
    assert client.post("/queues/nope/pause").status_code == 404


def test_queue_controls_need_an_admin_key(make_app, fake_redis):
    app = make_app(auth="required")
    ring = KeyRing(fake_redis, app.extensions["inferno"].settings)
    user, _, _ = ring.create("user")
    admin, _, _ = ring.create("ops", admin=True)
    client = app.test_client()
    refused = client.post(f"/queues/{LOW}/pause", headers={"X-API-Key": user})
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "AUTHORIZATION_FAILED"
    assert client.post(f"/queues/{LOW}/pause", headers={"X-API-Key": admin}).status_code == 200
    assert client.get("/queues", headers={"X-API-Key": user}).status_code == 200
    assert client.get("/queues").status_code == 401


def test_workers_view(client, fake_redis):
    store = client.application.extensions["inferno"].store
    fake_redis.hset(store.keys.workers(), "cpu@box", json.dumps(
        {"hostname": "cpu@box", "pool": "cpu", "queues": ["inferno.cpu.high"], "last_seen": now()}))
    fake_redis.hset(store.keys.workers(), "cpu@gone", json.dumps(
        {"hostname": "cpu@gone", "pool": "cpu", "queues": [], "last_seen": now() - 3600}))
    j = store.create(job())[0]
    store.claim(j.id, "box:1")
    done = [store.finish(j.id, JobStatus.FAILED, error={"code": "INFERENCE_FAILED", "message": "x"})]
    record_worker_jobs(fake_redis, store.keys, "cpu@box", done, process="box:1", models=["iris"])
    body = client.get("/workers").get_json()
    assert body["total"] == 2 and body["healthy"] == 1
    box = next(w for w in body["workers"] if w["name"] == "cpu@box")
    assert box["host"] == "box" and box["healthy"] and box["models"] == ["iris"]
    assert box["jobs_done"] == 1 and box["errors"] == 1 and box["mean_run_time_s"] >= 0
    # The process unloads iris and reports it (a model command, no job since): the view follows at once.
    fake_redis.hset(store.keys.loaded_models(), "box:1", json.dumps({"models": [], "reported_at": now() + 1}))
    box = next(w for w in client.get("/workers").get_json()["workers"] if w["name"] == "cpu@box")
    assert box["models"] == []


def test_fair_share_claims_the_other_tenants_job_next(fake_redis, settings):
    store = JobStore(fake_redis, settings)
    backlog = [store.create(job("A"))[0] for _ in range(20)]
    single = store.create(job("B"))[0]
    order = store.next_queued(LOW, 21)
    assert order.index(single.id) <= 1  # not behind A's twenty
    assert store.queue_position(single) <= 1
    runner = BatchRunner(store, lambda model, inputs: [{"ok": 1}] * len(inputs), model_config=None)
    # The message of A's last job runs the queue's next job in fair order; B's job is among the first two.
    firsts = [runner.claim_first(backlog[-1].id).id, runner.claim_first(backlog[-2].id).id]
    assert single.id in firsts
    # A tenant alone keeps FIFO order.
    assert firsts == [backlog[0].id, single.id]
    assert store.next_queued(LOW, 3) == [b.id for b in backlog[1:4]]


def test_consumer_plan_keeps_strict_priority_order():
    queues = ["q.high", "q.normal", "q.low"]
    assert plan(queues, queues, set()) == ([], [])
    assert plan(queues, queues, {"q.normal"}) == (["q.normal", "q.low"], ["q.low"])
    assert plan(queues, ["q.high", "q.low"], set()) == (["q.low"], ["q.normal", "q.low"])
    assert plan(queues, queues, {"q.high"}) == (queues, ["q.normal", "q.low"])


def test_a_node_manages_only_the_queues_it_was_started_on(settings):
    from workers.celery_app import make_celery

    everything = make_celery(settings)  # started without -Q
    assert node_queues(everything, "cpu") == ["inferno.cpu.high", "inferno.cpu.normal", "inferno.cpu.low"]
    express = make_celery(settings)
    express.amqp.queues.select(["inferno.cpu.high"])  # what ``celery worker -Q inferno.cpu.high`` does
    assert node_queues(express, "cpu") == ["inferno.cpu.high"]
    # so pausing and resuming another queue plans nothing for it
    assert plan(["inferno.cpu.high"], ["inferno.cpu.high"], {"inferno.cpu.low"}) == ([], [])

"""The Redis job store on fakeredis: atomic transitions, indexes, idempotency, paging, tenants, leases, expiry."""

import json

import pytest

from inferno_jobs import reads
from inferno_jobs.errors import Conflict, IllegalTransition, JobNotFound
from inferno_jobs.job import Job, JobStatus, JobType, Priority
from inferno_jobs.store import JobStore


@pytest.fixture
def store(fake_redis, settings):
    return JobStore(fake_redis, settings)


def new(store, tenant="t1", priority=Priority.NORMAL, **kw):
    job = Job.create(type=JobType.PREDICT, model="iris", tenant=tenant, input={"features": [[1, 2, 3, 4]]},
                     priority=priority, **kw)
    return store.create(job)[0]


def test_create_then_get(store):
    job = new(store)
    assert store.get(job.id) == job
    assert store.get(job.id, "t1").id == job.id


def test_unknown_and_foreign_ids_are_not_found(store):
    job = new(store, tenant="a")
    with pytest.raises(JobNotFound):
        store.get("job_doesnotexist")
    with pytest.raises(JobNotFound):
        store.get(job.id, tenant="b")


def test_terminal_write_sets_result_and_retention_expiry_together(store, settings):
    job = new(store)
    store.claim(job.id, "w:1")
    store.finish(job.id, JobStatus.SUCCEEDED, result={"predictions": [1]})
    raw = json.loads(store.redis.get(store.keys.job(job.id)))
    assert raw["status"] == "succeeded" and raw["result"] == {"predictions": [1]}
    ttl = store.redis.ttl(store.keys.job(job.id))
    assert settings.result_retention_s - 5 <= ttl <= settings.result_retention_s


def test_retention_ends_in_404(store, fake_redis):
    job = new(store)
    store.cancel(job.id)
    fake_redis.delete(store.keys.job(job.id))  # what Redis does when the retention expiry fires
    with pytest.raises(JobNotFound):
        store.get(job.id)
    assert store.list("t1")[0] == []


def test_finish_keeps_the_first_ending(store):
    job = new(store)
    store.claim(job.id, "w:1")
    store.finish(job.id, JobStatus.SUCCEEDED, result={"a": 1})
    again = store.finish(job.id, JobStatus.FAILED, error={"code": "X", "message": "late"})
    assert again.status is JobStatus.SUCCEEDED and again.error is None


def test_illegal_transition_writes_nothing(store):
    job = new(store)
    with pytest.raises(IllegalTransition):
        store.transition(job.id, JobStatus.SUCCEEDED)
    assert store.get(job.id).status is JobStatus.QUEUED


def test_queue_position_counts_higher_priorities_first(store):
    lows = [new(store, priority=Priority.LOW) for _ in range(3)]
    normal = new(store)
    high = new(store, priority=Priority.HIGH)
    assert store.queue_position(high) == 0
    assert store.queue_position(normal) == 1
    assert [store.queue_position(j) for j in lows] == [2, 3, 4]
    store.claim(high.id, "w:1")
    assert store.queue_position(lows[0]) == 1


def test_reads_on_one_pipeline_give_what_each_reading_alone_gives(store):
    lows = [new(store, priority=Priority.LOW) for _ in range(2)]
    new(store, priority=Priority.HIGH, tenant="t2")
    with store.redis.pipeline(transaction=False) as pipe:
        together = reads.run(pipe, [store.read_position(pipe, lows[1]), store.read_position(pipe, lows[0])])
    assert together == [store.queue_position(lows[1]), store.queue_position(lows[0])] == [2, 1]
    assert store.queue_depths(["inferno.cpu.high", "inferno.cpu.low"]) == [1, 2]


def test_cancel_queued_is_immediate_and_running_is_flagged(store):
    queued, running = new(store), new(store)
    assert store.cancel(queued.id).status is JobStatus.CANCELED
    assert store.claim(queued.id, "w:1") is None  # a canceled job never runs
    store.claim(running.id, "w:1")
    flagged = store.cancel(running.id)
    assert flagged.status is JobStatus.RUNNING and flagged.cancel_requested
    assert store.finish(running.id, JobStatus.SUCCEEDED, result={}).status is JobStatus.CANCELED
    with pytest.raises(Conflict):
        store.cancel(running.id)


def test_expiry_on_read_and_on_claim(store, monkeypatch):
    a, b = new(store, ttl_s=1), new(store, ttl_s=1)
    import inferno_jobs.store as store_module
    later = a.created_at + 5
    monkeypatch.setattr(store_module, "now", lambda: later)
    assert store.get(a.id).status is JobStatus.EXPIRED
    assert store.claim(b.id, "w:1") is None
    assert store.get(b.id).status is JobStatus.EXPIRED
    assert store.get(b.id).error["code"] == "TIMEOUT"


def test_due_for_expiry_lists_only_overdue_queued_jobs(store):
    job = new(store, ttl_s=10)
    assert store.due_for_expiry(job.created_at + 1) == []
    assert store.due_for_expiry(job.created_at + 11) == [job.id]
    store.claim(job.id, "w:1")
    assert store.due_for_expiry(job.created_at + 11) == []


def test_idempotency_same_body_returns_first_other_body_conflicts(store):
    first, created = store.create(Job.create(type=JobType.PREDICT, model="iris", tenant="t1", input={}),
                                  ("key-1", "hash-a"))
    assert created
    again, created = store.create(Job.create(type=JobType.PREDICT, model="iris", tenant="t1", input={}),
                                  ("key-1", "hash-a"))
    assert not created and again.id == first.id
    with pytest.raises(Conflict):
        store.create(Job.create(type=JobType.PREDICT, model="iris", tenant="t1", input={}), ("key-1", "hash-b"))
    # keys are per tenant
    other, created = store.create(Job.create(type=JobType.PREDICT, model="iris", tenant="t2", input={}),
                                  ("key-1", "hash-b"))
    assert created and other.id != first.id


def test_cursor_paging_walks_every_job_newest_first(store):
    ids = [new(store).id for _ in range(25)]
    seen, cursor = [], None
    while True:
        page, cursor = store.list("t1", limit=10, cursor=cursor)
        seen += [j.id for j in page]
        if cursor is None:
            break
    assert seen == list(reversed(ids))


def test_list_filters_and_tenant_scope(store):
    done = new(store)
    store.cancel(done.id)
    new(store)
    new(store, tenant="t2")
    page, cursor = store.list("t1", status="canceled")
    assert [j.id for j in page] == [done.id] and cursor is None
    assert len(store.list("t1")[0]) == 2
    assert len(store.list("t2")[0]) == 1
    assert store.list("t1", type="embedding")[0] == []


def test_claim_gives_a_lease_and_refuses_a_duplicate_delivery(store):
    job = new(store)
    running = store.claim(job.id, "host:1")
    assert running.status is JobStatus.RUNNING and running.lease_owner == "host:1"
    assert store.claim(job.id, "host:2", owner_alive=lambda owner: True) is None


def test_claim_takes_over_from_a_dead_owner(store):
    job = new(store)
    store.claim(job.id, "host:1")
    taken = store.claim(job.id, "host:2", owner_alive=lambda owner: False)
    assert taken.lease_owner == "host:2" and len(taken.attempts) == 2
    assert taken.attempts[0].outcome == "worker_lost"


def test_a_job_canceled_while_its_lost_run_went_on_ends_canceled_instead_of_running_again(store):
    job = new(store)
    store.claim(job.id, "host:1")
    store.cancel(job.id)  # flagged: its worker would stop at its end
    assert store.claim(job.id, "host:2", owner_alive=lambda owner: False) is None  # that worker died
    final = store.get(job.id)
    assert final.status is JobStatus.CANCELED and len(final.attempts) == 1  # no second run
    assert final.attempts[0].outcome == "canceled" and final.attempts[0].finished_at


def test_a_job_that_keeps_losing_its_worker_fails(store, settings):
    job = new(store)
    for n in range(settings.max_attempts):
        assert store.claim(job.id, f"host:{n}", owner_alive=lambda owner: False) is not None
    assert store.claim(job.id, "host:last", owner_alive=lambda owner: False) is None
    final = store.get(job.id)
    assert final.status is JobStatus.FAILED and "lost" in final.error["message"]


def test_release_orphans_a_stale_lease_for_takeover(store, monkeypatch):
    job = new(store)
    store.claim(job.id, "host:1")
    assert store.release(job.id) is None  # lease still live
    import inferno_jobs.store as store_module
    t = store.get(job.id).lease_expires_at + 1
    monkeypatch.setattr(store_module, "now", lambda: t)
    assert store.stale_leases(t) == [job.id]
    assert store.release(job.id).lease_owner is None
    assert store.claim(job.id, "host:2", owner_alive=lambda owner: True).lease_owner == "host:2"


def test_terminal_event_goes_to_the_outbox_in_the_same_write(store):
    job = new(store, webhook={"url": "https://example.org/h", "events": None})
    silent = new(store, webhook={"url": "https://example.org/h", "events": ["job.failed"]})
    store.claim(job.id, "w:1")
    store.finish(job.id, JobStatus.SUCCEEDED, result={})
    store.claim(silent.id, "w:1")
    store.finish(silent.id, JobStatus.SUCCEEDED, result={})
    events = [json.loads(e) for e in store.redis.lrange(store.keys.outbox(), 0, -1)]
    assert [(e["type"], e["job_id"]) for e in events] == [("job.succeeded", job.id)]
    assert events[0]["id"].startswith("msg_")


def test_waiting_lists_same_model_jobs_by_priority(store):
    low = new(store, priority=Priority.LOW)
    high = new(store, priority=Priority.HIGH)
    normal = new(store)
    assert store.waiting("iris", 10) == [high.id, normal.id, low.id]
    store.claim(high.id, "w:1")
    assert store.waiting("iris", 10) == [normal.id, low.id]


def test_queued_jobs_whose_message_is_old_are_listed_for_resending(store, monkeypatch):
    import inferno_jobs.store as store_module
    job = new(store)
    assert store.unsent(60, job.created_at + 30) == []
    assert store.unsent(60, job.created_at + 61) == [job.id]
    monkeypatch.setattr(store_module, "now", lambda: job.created_at + 100)
    store.mark_sent(job.id)
    assert store.unsent(60, job.created_at + 130) == []
    assert store.unsent(60, job.created_at + 161) == [job.id]
    store.claim(job.id, "w:1")
    assert store.unsent(0, job.created_at + 10_000) == []
    store.mark_sent(job.id)  # only while queued: never re-adds a job that left the queue
    assert store.unsent(0, job.created_at + 10_000) == []

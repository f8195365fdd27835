"""GET /metrics: Prometheus text from Redis-kept counters that move with the jobs, worker side included."""

import json

from prometheus_client.parser import text_string_to_metric_families

from inferno_jobs.job import JobStatus, now
from inferno_jobs.keyspace import Keyspace
from inferno_jobs.metrics import JOBS_FINISHED, RUN_TIME, WEBHOOK_DELIVERIES, Metrics, Tally, record_worker_jobs
from inferno_jobs.model import ModelRepository
from workers.batching import BatchRunner
from workers.engine import Engine

IRIS = {"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}, "priority": "low"}


def scrape(client) -> dict:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.get_data(as_text=True)):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_and_histograms_move_as_jobs_run(make_app, fake_redis, settings):
    app = make_app(engine_enable_cache=False)  # three identical jobs, each run (in one micro-batch), not shared
    client = app.test_client()
    before = scrape(client)
    assert value(before, "inferno_queue_depth", queue="inferno.cpu.low") == 0
    ids = [client.post("/jobs", json=IRIS).get_json()["id"] for _ in range(3)]
    queued = scrape(client)
    assert value(queued, "inferno_jobs_submitted_total", type="predict", model="iris", priority="low") == 3
    assert value(queued, "inferno_queue_depth", queue="inferno.cpu.low") == 3

    # What a worker process does: its store writes move the same Redis counters the API renders.
    store = app.extensions["inferno"].store
    runner = BatchRunner(store, Engine(settings).run, model_config=ModelRepository(settings.model_dir).get)
    finished = runner.run(ids[0])
    assert {j.status for j in finished} == {JobStatus.SUCCEEDED}
    record_worker_jobs(store.redis, store.keys, "cpu@test", finished, process="test:1", models=["iris"])
    after = scrape(client)
    assert value(after, "inferno_jobs_finished_total", type="predict", model="iris", priority="low",
                 status="succeeded") == 3
    assert value(after, "inferno_job_queue_wait_seconds_count", model="iris", priority="low") == 3
    assert value(after, "inferno_job_run_seconds_count", type="predict", model="iris", status="succeeded") == 3
    assert value(after, "inferno_job_run_seconds_bucket", type="predict", model="iris", status="succeeded",
                 le="+Inf") == 3
    assert value(after, "inferno_queue_depth", queue="inferno.cpu.low") == 0

    client.post("/jobs", json=IRIS)
    job = client.post("/jobs", json=IRIS).get_json()
    client.post(f"/jobs/{job['id']}/cancel")
    canceled = scrape(client)
    assert value(canceled, "inferno_jobs_finished_total", type="predict", model="iris", priority="low",
                 status="canceled") == 1


def test_gauges_webhooks_workers_and_models(make_app, fake_redis):
    app = make_app()
    svc = app.extensions["inferno"]
    keys = svc.store.keys
    fake_redis.hset(keys.workers(), "cpu@a", json.dumps({"hostname": "cpu@a", "pool": "cpu", "last_seen": now()}))
    fake_redis.hset(keys.loaded_models(), "a:1", json.dumps({"models": ["iris"], "reported_at": now()}))
    Metrics(fake_redis, keys).inc(WEBHOOK_DELIVERIES, ("job.succeeded", "delivered"))
    samples = scrape(app.test_client())
    assert value(samples, "inferno_workers_online", pool="cpu") == 1
    assert value(samples, "inferno_workers_online", pool="gpu") == value(samples, "inferno_workers_online",
                                                                        pool="webhooks") == 0
    assert value(samples, "inferno_model_loaded_processes", model="iris") == 1
    assert value(samples, "inferno_model_loaded_processes", model="diabetes") == 0
    assert value(samples, "inferno_webhook_deliveries_total", event="job.succeeded", outcome="delivered") == 1


def test_rate_limit_refusals_are_counted(make_app):
    client = make_app(max_queue_depth=1).test_client()
    client.post("/jobs", json=IRIS)
    assert client.post("/jobs", json=IRIS).status_code == 503
    assert value(scrape(client), "inferno_rate_limited_total", limit="queue_depth") == 1


def test_a_tally_writes_the_moves_of_a_micro_batch_merged(fake_redis, settings):
    metrics = Metrics(fake_redis, Keyspace(settings.key_prefix))
    tally = Tally()
    for _ in range(64):  # what finishing a micro-batch of 64 jobs of one model moves
        metrics.inc(JOBS_FINISHED, ("embedding", "minilm", "normal", "succeeded"), pipe=tally)
        metrics.observe(RUN_TIME, ("embedding", "minilm", "succeeded"), 0.25, pipe=tally)
    pipe = fake_redis.pipeline()
    tally.flush(pipe)
    assert len(pipe.command_stack) == 3  # the counter, the histogram's bucket and its sum: one command each
    pipe.execute()
    assert metrics.counter(JOBS_FINISHED) == {("embedding", "minilm", "normal", "succeeded"): 64}
    (buckets, total), = metrics.histogram(RUN_TIME).values()
    assert dict(buckets)["+Inf"] == 64 and total == 16.0
    pipe = fake_redis.pipeline()
    tally.flush(pipe)  # flushed moves are forgotten
    assert pipe.command_stack == []

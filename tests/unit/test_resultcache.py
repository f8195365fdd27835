"""The result cache and request deduplication on fakeredis: keys, what is cacheable, LRU and TTL, the API's cache
hits and shared runs, settling followers, /cache/stats, /cache/clear and /metrics."""

import dataclasses
import json
import os
import time

import pytest

from inferno_jobs import engine_config, resultcache
from inferno_jobs.apikey import KeyRing
from inferno_jobs.engine_config import EngineConfig
from inferno_jobs.job import JobStatus, JobType
from inferno_jobs.keyspace import Keyspace
from inferno_jobs.model import ModelRepository
from inferno_jobs.resultcache import ResultCache, cache_key, canonical_input
from workers.batching import BatchRunner

IRIS = {"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}}
PREDICTION = {"predictions": ["setosa"], "probabilities": [[0.9, 0.05, 0.05]]}


def config(settings, **changes) -> EngineConfig:
    return dataclasses.replace(EngineConfig.defaults(settings), **changes)


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def svc(app):
    return app.extensions["inferno"]


def run_worker(svc, outcome=PREDICTION, sent=None):
    """What a worker's task does with the next message: run a micro-batch (a fake engine), then the cache's part."""
    job_id = sent or svc.celery.sent[-1]["args"][0]
    calls = []

    def engine_run(model, inputs):
        calls.append(inputs)
        return [outcome] * len(inputs)
    config = engine_config.load(svc.redis, svc.store.keys, svc.settings)
    runner = BatchRunner(svc.store, engine_run, model_config=ModelRepository(svc.settings.model_dir).get,
                         remember=lambda jobs, outcomes: resultcache.remember(svc.store, config, jobs, outcomes))
    finished = runner.run(job_id)
    shared = resultcache.settle(svc.store, lambda job: svc.celery.send_task("inferno.run_job", args=[job.id]))
    return finished, shared, calls


# -- keys and what is cacheable ----------------------------------------------------------------------------------

def test_the_key_is_stable_and_defaults_do_not_change_it():
    explicit = {"prompt": "hi", "temperature": 0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0,
                "stop": None, "seed": None}
    a = canonical_input(JobType.COMPLETION, {"prompt": "hi", "temperature": 0})
    b = canonical_input(JobType.COMPLETION, explicit)
    assert a == b
    # No max_tokens is the model's default_max_tokens, which its config decides: not the same as any number.
    assert canonical_input(JobType.COMPLETION, {**explicit, "max_tokens": 64}) != a
    key = cache_key("t1", "tiny-gpt", "v1", JobType.COMPLETION, a)
    assert key == cache_key("t1", "tiny-gpt", "v1", JobType.COMPLETION, b)
    assert len(key) == 64
    # Every part of the request is in the key: tenant, model, version, type, input.
    assert len({key, cache_key("t2", "tiny-gpt", "v1", JobType.COMPLETION, a),
                cache_key("t1", "other", "v1", JobType.COMPLETION, a),
                cache_key("t1", "tiny-gpt", "v2", JobType.COMPLETION, a),
                cache_key("t1", "tiny-gpt", "v1", JobType.CHAT, a),
                cache_key("t1", "tiny-gpt", "v1", JobType.COMPLETION, {**a, "max_tokens": 65})}) == 6
    # One stop string is the same request as a list of it; a stream flag set to false changes nothing.
    assert canonical_input(JobType.COMPLETION, {"prompt": "hi", "temperature": 0, "stop": "\n"}) == \
        canonical_input(JobType.COMPLETION, {"prompt": "hi", "temperature": 0, "stop": ["\n"], "stream": False})


@pytest.mark.parametrize("job_type, data, cacheable", [
    (JobType.PREDICT, {"features": [[1, 2, 3, 4]]}, True),
    (JobType.EMBEDDING, {"input": ["a", "b"]}, True),
    (JobType.COMPLETION, {"prompt": "x", "temperature": 0}, True),
    (JobType.COMPLETION, {"prompt": "x", "temperature": 0.7, "seed": 7}, True),
    (JobType.CHAT, {"messages": [{"role": "user", "content": "x"}], "top_k": 1, "temperature": 1.2}, True),
    (JobType.COMPLETION, {"prompt": "x", "temperature": 0.7}, False),
    (JobType.COMPLETION, {"prompt": "x"}, False),  # the default temperature (1.0) samples
    (JobType.CHAT, {"messages": [{"role": "user", "content": "x"}], "temperature": 0.5}, False),
    (JobType.COMPLETION, {"prompt": "x", "temperature": 0, "stream": True}, False),
    (JobType.COMPLETION, {"prompt": "x", "temperature": 0, "unknown": 1}, False),
])
def test_what_is_cacheable(job_type, data, cacheable):
    assert (canonical_input(job_type, data) is not None) is cacheable


def test_the_model_version_changes_with_its_files(model_dir):
    model = ModelRepository(model_dir).get("iris")
    before = model.version
    assert model.version == before
    onnx = model.onnx_path
    stat = onnx.stat()
    os.utime(onnx, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    try:
        assert model.version != before
    finally:
        os.utime(onnx, ns=(stat.st_atime_ns, stat.st_mtime_ns))


# -- the cache itself --------------------------------------------------------------------------------------------

def test_lru_eviction_counts_and_stats(fake_redis, settings):
    cache = ResultCache(fake_redis, Keyspace(settings.key_prefix), config(settings, max_cache_entries=2))
    assert cache.put("a", {"v": "a"}) == 0 and cache.put("b", {"v": "b"}) == 0
    assert cache.get("a", JobType.PREDICT, "iris") == {"v": "a"}  # a is now the most recently used
    assert cache.put("c", {"v": "c"}) == 1  # so b goes
    assert cache.get("b", JobType.PREDICT, "iris") is None
    assert cache.get("c", JobType.PREDICT, "iris") == {"v": "c"}
    assert cache.stats() == {"size": 2, "capacity": 2, "hit_count": 2, "miss_count": 1, "hit_rate": 0.6667,
                             "eviction_count": 1}


def test_entries_expire_after_the_ttl(fake_redis, settings):
    cache = ResultCache(fake_redis, Keyspace(settings.key_prefix), config(settings, cache_ttl_seconds=1))
    cache.put("a", {"v": 1})
    assert cache.get("a", JobType.PREDICT, "iris") == {"v": 1}
    time.sleep(1.1)
    assert cache.get("a", JobType.PREDICT, "iris") is None
    assert cache.stats()["size"] == 0


def test_clear_empties_the_cache_and_keeps_the_counters(fake_redis, settings):
    cache = ResultCache(fake_redis, Keyspace(settings.key_prefix), config(settings))
    for name in "abc":
        cache.put(name, {"v": name})
    cache.get("a", JobType.PREDICT, "iris")
    assert cache.clear() == 3
    assert cache.get("a", JobType.PREDICT, "iris") is None
    assert cache.stats() | {"hit_rate": None} == {"size": 0, "capacity": 1000, "hit_count": 1, "miss_count": 1,
                                                  "hit_rate": None, "eviction_count": 0}


# -- through the API ---------------------------------------------------------------------------------------------

def test_a_repeated_request_is_answered_from_the_cache(make_app):
    app = make_app(webhook_allowed_networks=("127.0.0.0/8",))
    client, svc = app.test_client(), app.extensions["inferno"]
    first = client.post("/jobs", json=IRIS)
    assert first.status_code == 202 and first.headers["X-Cache"] == "MISS"
    finished, _, calls = run_worker(svc)
    assert [j.status for j in finished] == [JobStatus.SUCCEEDED] and len(calls) == 1

    again = client.post("/jobs", json={**IRIS, "webhook_url": "http://127.0.0.1:9/hook"})
    assert again.status_code == 202 and again.headers["X-Cache"] == "HIT"
    job = again.get_json()
    assert job["status"] == "succeeded" and job["result"] == PREDICTION and job["id"] != first.get_json()["id"]
    assert [a["worker"] for a in job["attempt_history"]] == [resultcache.CACHE_WORKER]
    assert len(svc.celery.sent) == 1 + 1  # the first job's message, then the webhook hand-over only
    assert svc.celery.sent[-1]["name"] != "inferno.run_job"
    # Its status event ends its stream, so a synchronous caller answers at once.
    events = svc.store.events.read({job["id"]: "0"}, block_ms=1)
    assert [e.data["status"] for _, e in events] == ["queued", "running", "succeeded"]
    stats = client.get("/cache/stats").get_json()
    assert stats["result_cache"] == {"size": 1, "capacity": 1000, "hit_count": 1, "miss_count": 1,
                                     "hit_rate": 0.5, "eviction_count": 0}
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'inferno_cache_hits_total{model="iris",type="predict"} 1.0' in metrics
    assert 'inferno_cache_misses_total{model="iris",type="predict"} 1.0' in metrics


@pytest.fixture
def gpt_app(make_app, tmp_path):
    """An app whose repository has a completion model (the API reads only its config.json)."""
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"type": "completion", "context_length": 128}))
    (tmp_path / "gpt" / "model.onnx").write_bytes(b"onnx")
    return make_app(model_dir=tmp_path)


@pytest.mark.parametrize("params, cached", [({"temperature": 0.7}, False), ({}, False),
                                             ({"temperature": 0.7, "seed": 3}, True), ({"temperature": 0}, True)])
def test_only_deterministic_generation_is_answered_from_the_cache(gpt_app, params, cached):
    client, svc = gpt_app.test_client(), gpt_app.extensions["inferno"]
    body = {"type": "completion", "model": "gpt", "input": {"prompt": "Once", **params}}
    text = {"text": " upon", "finish_reason": "length", "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                                                  "total_tokens": 2}}
    client.post("/jobs", json=body)
    run_worker(svc, outcome=text)
    again = client.post("/jobs", json=body)
    assert (again.get_json()["status"] == "succeeded") is cached
    assert again.headers.get("X-Cache") == ("HIT" if cached else None)
    assert len(svc.celery.sent) == (1 if cached else 2)  # a sampled request runs again
    if cached:
        assert again.get_json()["result"] == text


def test_with_the_cache_off_every_request_runs(app, svc):
    engine_config.save(svc.redis, svc.store.keys, {"enable_cache": False})
    client = app.test_client()
    for _ in range(2):
        r = client.post("/jobs", json=IRIS)
        assert r.get_json()["status"] == "queued" and "X-Cache" not in r.headers
        run_worker(svc)
    assert len(svc.celery.sent) == 2


def test_the_sync_predict_endpoint_answers_a_cached_request_at_once(app, svc):
    client = app.test_client()
    client.post("/jobs", json={**IRIS, "priority": "high"})
    run_worker(svc)
    started = time.monotonic()
    r = client.post("/predict", json={"features": [[5.1, 3.5, 1.4, 0.2]], "model": "iris"})
    assert r.status_code == 200 and r.headers["X-Cache"] == "HIT" and time.monotonic() - started < 2
    assert r.get_json()["predictions"] == [["setosa"]]


def test_identical_requests_in_flight_share_one_run(app, svc):
    client = app.test_client()
    leader = client.post("/jobs", json=IRIS).get_json()
    follower = client.post("/jobs", json=IRIS).get_json()
    assert follower["status"] == "queued"
    assert len(svc.celery.sent) == 1  # the follower sends no message: no worker will take it
    finished, shared, calls = run_worker(svc)
    assert [j.id for j in finished] == [leader["id"]] and len(calls) == 1 and len(calls[0]) == 1
    assert [j.id for j in shared] == [follower["id"]]
    done = client.get(f"/jobs/{follower['id']}").get_json()
    assert done["status"] == "succeeded" and done["result"] == PREDICTION
    assert done["attempt_history"][0]["worker"] == f"shared:{leader['id']}"
    assert svc.redis.llen(svc.store.keys.cache_settle()) == 0


def test_a_request_that_comes_while_its_leader_is_being_stored_follows_it(app, svc):
    import threading

    client = app.test_client()
    leader = client.post("/jobs", json=IRIS).get_json()
    key = svc.store.keys.job(leader["id"])
    record = svc.redis.get(key)
    svc.redis.delete(key)  # as between the leader's claim of the in-flight key and its record's write
    threading.Timer(0.03, lambda: svc.redis.set(key, record)).start()
    follower = client.post("/jobs", json=IRIS).get_json()
    assert len(svc.celery.sent) == 1  # it waited for the record and follows: no run of its own
    assert svc.store.get(follower["id"]).shared_run_of == leader["id"]
    # A leader that is never stored (its creation was refused): the follower runs alone, after a short wait.
    inflight = svc.store.keys.cache_inflight(svc.store.get(follower["id"]).cache_key)
    svc.redis.set(inflight, "job_01nevers7oredbecauserefused0")
    started = time.monotonic()
    alone = client.post("/jobs", json={**IRIS, "priority": "high"}).get_json()
    assert time.monotonic() - started < 2 and svc.store.get(alone["id"]).shared_run_of is None
    assert len(svc.celery.sent) == 2


def test_followers_of_a_leader_that_failed_run_on_their_own(app, svc):
    from inferno_jobs.errors import InferenceFailed

    client = app.test_client()
    leader = client.post("/jobs", json=IRIS).get_json()
    follower = client.post("/jobs", json=IRIS).get_json()
    run_worker(svc, outcome=InferenceFailed("boom"))
    assert client.get(f"/jobs/{leader['id']}").get_json()["status"] == "failed"
    assert svc.celery.sent[-1]["args"] == [follower["id"]]  # sent to run now
    finished, _, _ = run_worker(svc)
    assert [j.id for j in finished] == [follower["id"]] and finished[0].status is JobStatus.SUCCEEDED


def test_canceling_a_leader_sends_its_followers_and_a_canceled_follower_stays_canceled(app, svc):
    client = app.test_client()
    leader = client.post("/jobs", json=IRIS).get_json()
    kept = client.post("/jobs", json=IRIS).get_json()
    dropped = client.post("/jobs", json=IRIS).get_json()
    assert client.post(f"/jobs/{dropped['id']}/cancel").get_json()["status"] == "canceled"
    assert client.post(f"/jobs/{leader['id']}/cancel").get_json()["status"] == "canceled"
    assert [m["args"] for m in svc.celery.sent if m["name"] == "inferno.run_job"] == [[leader["id"]], [kept["id"]]]
    assert client.get(f"/jobs/{dropped['id']}").get_json()["status"] == "canceled"
    finished, _, _ = run_worker(svc)
    assert [j.id for j in finished] == [kept["id"]]


def test_settling_waits_in_redis_until_someone_drains_it(app, svc):
    """A leader's ending is recorded with it; the reconciler's pass settles it if the worker died first."""
    from workers.reconciler import Reconciler

    client = app.test_client()
    leader = client.post("/jobs", json=IRIS).get_json()
    follower = client.post("/jobs", json=IRIS).get_json()
    runner = BatchRunner(svc.store, lambda model, inputs: [PREDICTION] * len(inputs),
                         model_config=ModelRepository(svc.settings.model_dir).get)
    runner.run(leader["id"])  # the worker "dies" before its cache step
    assert svc.redis.lrange(svc.store.keys.cache_settle(), 0, -1) == [leader["id"].encode()]
    assert client.get(f"/jobs/{follower['id']}").get_json()["status"] == "queued"
    Reconciler(svc.store, lambda job: None, hostname="w@test", pool="cpu", queues=[], celery=svc.celery).tick()
    assert client.get(f"/jobs/{follower['id']}").get_json()["status"] == "succeeded"


def test_tenants_never_share_results(make_app, fake_redis):
    app = make_app(auth="required")
    ring = KeyRing(fake_redis, app.extensions["inferno"].settings)
    (a, _, _), (b, _, _) = ring.create("a"), ring.create("b")
    client, svc = app.test_client(), app.extensions["inferno"]
    client.post("/jobs", json=IRIS, headers={"X-API-Key": a})
    run_worker(svc)
    other = client.post("/jobs", json=IRIS, headers={"X-API-Key": b})
    assert other.get_json()["status"] == "queued" and other.headers["X-Cache"] == "MISS"
    assert client.post("/jobs", json=IRIS, headers={"X-API-Key": a}).headers["X-Cache"] == "HIT"


def test_cache_clear_needs_an_admin_key_and_empties_the_cache(make_app, fake_redis):
    app = make_app(auth="required")
    ring = KeyRing(fake_redis, app.extensions["inferno"].settings)
    user, _, _ = ring.create("u")
    admin, _, _ = ring.create("ops", admin=True)
    client, svc = app.test_client(), app.extensions["inferno"]
    client.post("/jobs", json=IRIS, headers={"X-API-Key": user})
    run_worker(svc)
    assert client.get("/cache/stats").status_code == 401
    assert client.get("/cache/stats", headers={"X-API-Key": user}).get_json()["result_cache"]["size"] == 1
    refused = client.post("/cache/clear", headers={"X-API-Key": user})
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "AUTHORIZATION_FAILED"
    cleared = client.post("/cache/clear", headers={"X-API-Key": admin})
    assert cleared.status_code == 200
    assert cleared.get_json() == {"success": True, "result_cache_cleared": True, "cleared_entries": 1,
                                  "message": "Result cache cleared (1 entries)"}
    assert client.get("/cache/stats", headers={"X-API-Key": user}).get_json()["result_cache"]["size"] == 0
    assert client.post("/jobs", json=IRIS, headers={"X-API-Key": user}).get_json()["status"] == "queued"


def test_the_live_config_sets_capacity_and_switches_the_cache(app, svc):
    engine_config.save(svc.redis, svc.store.keys, {"max_cache_entries": 1})
    client = app.test_client()
    for row in ([[1, 2, 3, 4]], [[2, 3, 4, 5]]):
        client.post("/jobs", json={**IRIS, "input": {"features": row}})
        run_worker(svc)
    stats = client.get("/cache/stats").get_json()["result_cache"]
    assert stats["size"] == 1 and stats["capacity"] == 1 and stats["eviction_count"] == 1
    assert "inferno_cache_evictions_total 1.0" in client.get("/metrics").get_data(as_text=True)


def test_a_request_never_waits_on_a_lower_priority_run(app, svc):
    client = app.test_client()
    low = client.post("/jobs", json={**IRIS, "priority": "low"}).get_json()
    high = client.post("/jobs", json={**IRIS, "priority": "high"}).get_json()
    also_high = client.post("/jobs", json={**IRIS, "priority": "high"}).get_json()
    assert [m["args"] for m in svc.celery.sent] == [[low["id"]], [high["id"]]]  # the high one runs in its own turn
    assert high["queue_position"] == 0
    finished, shared, _ = run_worker(svc, sent=high["id"])
    assert {j.id for j in finished} == {high["id"]}  # a high job's micro-batch carries no lows
    assert [j.id for j in shared] == [also_high["id"]]
    finished, _, _ = run_worker(svc, sent=low["id"])
    assert {j.id for j in finished} == {low["id"]}

"""Rate limits per API key (shared through Redis), their headers, 429 and 503 with Retry-After."""

import time

from inferno_jobs.apikey import KeyRing
from inferno_jobs.keyspace import Keyspace
from inferno_jobs.ratelimit import Limits, RateLimiter, estimate_tokens

IRIS = {"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}}


def keyed_app(make_app, fake_redis, **settings):
    app = make_app(auth="required", **settings)
    ring = KeyRing(fake_redis, app.extensions["inferno"].settings)
    return app, ring


def test_a_burst_is_cut_at_the_limit_with_headers_and_retry_after(make_app, fake_redis):
    app, ring = keyed_app(make_app, fake_redis, rate_limit_rpm=5)
    key, _, _ = ring.create("burst")
    client = app.test_client()
    remaining = []
    for _ in range(5):
        r = client.post("/jobs", json=IRIS, headers={"X-API-Key": key})
        assert r.status_code == 202
        assert r.headers["X-RateLimit-Limit"] == "5"
        remaining.append(int(r.headers["X-RateLimit-Remaining"]))
        reset = int(r.headers["X-RateLimit-Reset"])
        assert time.time() < reset <= time.time() + 61
    assert remaining == [4, 3, 2, 1, 0]
    refused = client.post("/jobs", json=IRIS, headers={"X-API-Key": key})
    assert refused.status_code == 429
    body = refused.get_json()
    assert body["error"]["code"] == "RATE_LIMIT_EXCEEDED" and body["error"]["details"]["limit"] == "rpm"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Remaining"] == "0" and refused.headers["X-Request-ID"]
    # Reads are not rate limited: polling a job never uses the budget up.
    listed = client.get("/jobs", headers={"X-API-Key": key})
    assert listed.status_code == 200 and "X-RateLimit-Limit" not in listed.headers


def test_limits_are_per_key_and_a_key_can_override_them(make_app, fake_redis):
    app, ring = keyed_app(make_app, fake_redis, rate_limit_rpm=3)
    small, _, _ = ring.create("small", limits={"rpm": 1})
    other, _, _ = ring.create("other")
    client = app.test_client()
    assert client.post("/jobs", json=IRIS, headers={"X-API-Key": small}).headers["X-RateLimit-Limit"] == "1"
    assert client.post("/jobs", json=IRIS, headers={"X-API-Key": small}).status_code == 429
    for _ in range(3):  # another key has its own budget, with the defaults
        assert client.post("/jobs", json=IRIS, headers={"X-API-Key": other}).status_code == 202


def test_replicas_share_the_counters_through_redis(make_app, fake_redis):
    app1, ring = keyed_app(make_app, fake_redis, rate_limit_rpm=4)
    app2 = make_app(auth="required", rate_limit_rpm=4)
    key, _, _ = ring.create("shared")
    codes = [app.test_client().post("/jobs", json=IRIS, headers={"X-API-Key": key}).status_code
             for app in (app1, app2, app1, app2, app1)]
    assert codes == [202, 202, 202, 202, 429]


def test_set_limits_changes_a_key_at_once(make_app, fake_redis):
    app, ring = keyed_app(make_app, fake_redis, rate_limit_rpm=1)
    key, record, _ = ring.create("grows")
    client = app.test_client()
    assert client.post("/jobs", json=IRIS, headers={"X-API-Key": key}).status_code == 202
    assert client.post("/jobs", json=IRIS, headers={"X-API-Key": key}).status_code == 429
    ring.set_limits(record.id, {"rpm": 10})
    r = client.post("/jobs", json=IRIS, headers={"X-API-Key": key})
    assert r.status_code == 202 and r.headers["X-RateLimit-Limit"] == "10"


def test_concurrent_jobs_limit_counts_queued_and_running_jobs(make_app, fake_redis):
    app, ring = keyed_app(make_app, fake_redis, rate_limit_concurrent=2)
    key, _, _ = ring.create("busy")
    client = app.test_client()
    first = client.post("/jobs", json=IRIS, headers={"X-API-Key": key}).get_json()
    assert client.post("/jobs", json=IRIS, headers={"X-API-Key": key}).status_code == 202
    refused = client.post("/jobs", json=IRIS, headers={"X-API-Key": key})
    assert refused.status_code == 429 and refused.headers["Retry-After"]
    assert refused.get_json()["error"]["details"]["limit"] == "concurrent"
    client.post(f"/jobs/{first['id']}/cancel", headers={"X-API-Key": key})  # a finished job frees its slot
    assert client.post("/jobs", json=IRIS, headers={"X-API-Key": key}).status_code == 202


def test_full_queues_answer_503_with_retry_after(make_app, fake_redis):
    client = make_app(max_queue_depth=2, queue_full_retry_after_s=7).test_client()
    assert [client.post("/jobs", json=IRIS).status_code for _ in range(2)] == [202, 202]
    full = client.post("/jobs", json=IRIS)
    assert full.status_code == 503 and full.headers["Retry-After"] == "7"
    assert full.get_json()["error"]["details"]["reason"] == "queue_full"


def test_a_refused_submission_leaves_nothing_behind(make_app, fake_redis, celery_stub):
    """The capacity checks run in the transaction that stores the job (inferno_jobs/admission.py): a refused job
    has no record, no index entry, no message and no idempotency key, and a later retry with the key succeeds."""
    app = make_app(max_queue_depth=1)
    client = app.test_client()
    assert client.post("/jobs", json=IRIS).status_code == 202
    keys_before, sent_before = set(fake_redis.keys()), len(celery_stub.sent)
    for headers in ({}, {"Idempotency-Key": "retry-me"}):
        refused = client.post("/jobs", json={**IRIS, "input": {"features": [[1, 2, 3, 4]]}}, headers=headers)
        assert refused.status_code == 503 and refused.get_json()["error"]["details"]["depth"] == 1
    new_keys = {k.decode() for k in set(fake_redis.keys()) - keys_before}
    assert all(":metrics:" in k for k in new_keys), new_keys  # only the refusal counters
    assert len(celery_stub.sent) == sent_before
    store = app.extensions["inferno"].store
    [queued] = store.list("local")[0]
    store.cancel(queued.id)
    again = client.post("/jobs", json={**IRIS, "input": {"features": [[1, 2, 3, 4]]}},
                        headers={"Idempotency-Key": "retry-me"})
    assert again.status_code == 202 and len(celery_stub.sent) == sent_before + 1


def test_auth_disabled_is_not_throttled_unless_limits_per_ip_are_on(make_app):
    client = make_app(rate_limit_rpm=3).test_client()
    for _ in range(5):
        r = client.post("/jobs", json=IRIS)
        assert r.status_code == 202 and "X-RateLimit-Limit" not in r.headers
    by_ip = make_app(rate_limit_rpm=3, rate_limit_by_ip=True, key_prefix="ip-test").test_client()
    codes = [by_ip.post("/jobs", json=IRIS).status_code for _ in range(4)]
    assert codes == [202, 202, 202, 429]


def test_tokens_per_minute_are_estimated_and_limited(fake_redis):
    assert estimate_tokens({"type": "completion", "input": {"prompt": "x" * 40, "max_tokens": 20}}) == 30
    assert estimate_tokens({"model": "m", "messages": [{"role": "user", "content": "y" * 8}], "max_tokens": 2}) == 4
    assert estimate_tokens({"input": ["abcd", "efgh"]}) == 2
    limiter = RateLimiter(fake_redis, Keyspace("tpm"))
    limits = Limits(rpm=0, rph=0, tpm=100, concurrent=0)
    t = 1_000_000.0
    assert limiter.hit("k", limits, tokens=60, at=t).allowed
    refused = limiter.hit("k", limits, tokens=60, at=t + 1)
    assert not refused.allowed and refused.refused_by == "tpm" and refused.retry_after_s >= 1
    assert refused.headers()["X-RateLimit-Remaining-Tokens"] == "40"
    assert limiter.hit("k", limits, tokens=40, at=t + 2).allowed
    assert limiter.hit("k", limits, tokens=60, at=t + 61).allowed  # the next minute starts over


def test_the_tighter_window_is_reported(fake_redis):
    limiter = RateLimiter(fake_redis, Keyspace("win"))
    limits = Limits(rpm=10, rph=3, tpm=0, concurrent=0)
    decisions = [limiter.hit("k", limits, at=7200.0 + i) for i in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[0].limit == 3 and decisions[2].remaining == 0
    assert decisions[3].refused_by == "rph" and decisions[3].retry_after_s > 60

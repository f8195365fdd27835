"""The result cache and request deduplication, real end to end: API -> Redis -> Celery -> ONNX Runtime worker.

A repeated deterministic request is answered from the cache (a hit counted, no second run); a sampled one runs
again; identical requests in flight run once; ``POST /cache/clear`` empties the cache.
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def submit(api, body):
    r = api.post("/jobs", json=body)
    assert r.status_code == 202, r.get_json()
    return r


def wait_done(api, job_id, timeout_s=60):
    def done():
        job = api.get(f"/jobs/{job_id}").get_json()
        return job if job["status"] not in ("queued", "running") else None
    return wait_for(done, timeout_s)


def jobs_done(api) -> int:
    return sum(w["jobs_done"] for w in api.get("/workers").get_json()["workers"])


def test_a_repeated_predict_is_answered_from_the_cache_without_a_second_run(api, start_worker):
    start_worker()
    body = {"type": "predict", "model": "iris", "input": {"features": [[5.9, 3.0, 5.1, 1.8]]}}
    first = submit(api, body)
    assert first.headers["X-Cache"] == "MISS"
    ran = wait_done(api, first.get_json()["id"])
    assert ran["status"] == "succeeded" and ran["attempts"] == 1
    wait_for(lambda: jobs_done(api) == 1)

    again = submit(api, body)
    job = again.get_json()
    assert again.headers["X-Cache"] == "HIT"
    assert job["status"] == "succeeded" and job["result"] == ran["result"] and job["id"] != ran["id"]
    assert [a["worker"] for a in job["attempt_history"]] == ["result-cache"]
    # The synchronous surface answers from the cache too, at once.
    started = time.monotonic()
    sync = api.post("/predict", json={"model": "iris", "features": [[5.9, 3.0, 5.1, 1.8]]})
    assert sync.status_code == 200 and sync.headers["X-Cache"] == "HIT" and time.monotonic() - started < 1
    assert sync.get_json()["predictions"] == [[p] for p in ran["result"]["predictions"]]

    time.sleep(1)  # room for a run that must not happen
    assert jobs_done(api) == 1
    stats = api.get("/cache/stats").get_json()["result_cache"]
    assert stats["hit_count"] == 2 and stats["miss_count"] == 1 and stats["size"] == 1
    assert 'inferno_cache_hits_total{model="iris",type="predict"} 2.0' in api.get("/metrics").get_data(as_text=True)


def test_identical_requests_in_flight_run_once(api, start_worker):
    body = {"type": "predict", "model": "iris", "input": {"features": [[6.3, 2.5, 4.9, 1.5]]}}
    ids = [submit(api, body).get_json()["id"] for _ in range(3)]  # no worker yet: all wait
    start_worker()
    done = [wait_done(api, i) for i in ids]
    assert {j["status"] for j in done} == {"succeeded"}
    assert done[1]["result"] == done[0]["result"] == done[2]["result"]
    assert [a["worker"] for a in done[1]["attempt_history"]] == [f"shared:{ids[0]}"]
    time.sleep(1)
    assert jobs_done(api) == 1  # one engine run for the three


def test_embeddings_are_cached_and_clear_empties_the_cache(api, start_worker, minilm_dir):
    start_worker()
    body = {"model": "minilm", "input": ["the cache keeps this", "and this"]}
    first = api.post("/v1/embeddings", json=body)
    assert first.status_code == 200 and first.headers["X-Cache"] == "MISS"
    again = api.post("/v1/embeddings", json=body)
    assert again.status_code == 200 and again.headers["X-Cache"] == "HIT"
    assert again.get_json()["data"] == first.get_json()["data"]

    assert api.get("/cache/stats").get_json()["result_cache"]["size"] == 1
    cleared = api.post("/cache/clear").get_json()
    assert cleared["success"] is True and cleared["result_cache_cleared"] is True
    assert api.get("/cache/stats").get_json()["result_cache"]["size"] == 0
    assert api.post("/v1/embeddings", json=body).headers["X-Cache"] == "MISS"  # it ran again


def test_greedy_completions_are_cached_and_sampled_ones_are_not(api, start_worker, tinygpt_dir):
    start_worker()
    greedy = {"type": "completion", "model": "tiny-gpt", "input": {"prompt": "The fox", "max_tokens": 8,
                                                                  "temperature": 0}}
    sampled = {"type": "completion", "model": "tiny-gpt", "input": {"prompt": "The fox", "max_tokens": 8,
                                                                   "temperature": 0.9}}
    first = wait_done(api, submit(api, greedy).get_json()["id"])
    hit = submit(api, greedy)
    assert hit.headers["X-Cache"] == "HIT" and hit.get_json()["result"] == first["result"]
    wait_done(api, submit(api, sampled).get_json()["id"])
    again = submit(api, sampled)
    assert "X-Cache" not in again.headers and again.get_json()["status"] == "queued"
    rerun = wait_done(api, again.get_json()["id"])
    assert rerun["status"] == "succeeded" and rerun["attempt_history"][0]["worker"] != "result-cache"

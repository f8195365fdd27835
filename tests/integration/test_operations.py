"""Operating it, end to end with real workers: fair share between tenants, one request id from the API through
the worker to the webhook delivery, /metrics moving with worker-side work, and queue/job controls."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import shutil
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from inferno_jobs import logs
from inferno_jobs.apikey import KeyRing
from tests.conftest import wait_for
from tests.unit.test_webhooks import IRIS, SECRET, Receiver

pytestmark = pytest.mark.integration

LOW = "inferno.cpu.low"


def metric(client, name, **labels) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_one_tenants_backlog_does_not_starve_another(live_settings, live_redis, start_worker, tmp_path):
    # iris with micro-batches of 4, so A's backlog takes 75 runs to drain.
    shutil.copytree(live_settings.model_dir / "iris", tmp_path / "iris")
    config = json.loads((tmp_path / "iris" / "config.json").read_text())
    (tmp_path / "iris" / "config.json").write_text(json.dumps({**config, "max_batch_size": 4}))
    # The cache off: A's 300 identical jobs must each take their turn, not share one run.
    settings = dataclasses.replace(live_settings, model_dir=tmp_path, auth="required", rate_limit_rpm=0,
                                   rate_limit_rph=0, rate_limit_tpm=0, rate_limit_concurrent=0,
                                   engine_enable_cache=False)
    client = create_app(settings, redis_client=live_redis).test_client()
    ring = KeyRing(live_redis, settings)
    key_a, key_b = ring.create("a")[0], ring.create("b")[0]
    low = {**IRIS, "priority": "low"}
    backlog = [client.post("/jobs", json=low, headers={"X-API-Key": key_a}).get_json()["id"] for _ in range(300)]
    single = client.post("/jobs", json=low, headers={"X-API-Key": key_b}).get_json()
    assert single["queue_position"] <= 1  # claimed next, not after A's 300
    start_worker(settings, concurrency=1)
    done_b = wait_for(lambda: (j := client.get(f"/jobs/{single['id']}", headers={"X-API-Key": key_b}).get_json())
                      ["status"] == "succeeded" and j, timeout_s=30)
    wait_for(lambda: live_redis.zcard(f"{settings.key_prefix}:queued:{LOW}") == 0, timeout_s=60)
    finished_a = sorted(client.get(f"/jobs/{i}", headers={"X-API-Key": key_a}).get_json()["finished_at"]
                        for i in backlog)
    before_b = sum(1 for f in finished_a if f < done_b["finished_at"])
    assert before_b <= 8, f"{before_b} of A's jobs finished before B's single job"
    assert finished_a[-1] > done_b["finished_at"]


@pytest.fixture
def api_log():
    """The API's log lines (JSON), as the WSGI entry point configures them."""
    buffer = io.StringIO()
    handler = logs.configure(dataclasses.replace(logs.Settings(), log_format="json"), stream=buffer)
    yield buffer
    logging.getLogger().removeHandler(handler)


def test_one_request_id_from_api_to_worker_to_webhook_and_metrics_move(live_settings, live_redis, start_worker,
                                                                       api_log):
    settings = dataclasses.replace(live_settings, webhook_secret=SECRET, webhook_allowed_networks=("127.0.0.0/8",))
    client = create_app(settings, redis_client=live_redis).test_client()
    receiver = Receiver()
    try:
        worker = start_worker(settings)
        hooks = start_worker(settings, pool="webhooks", queues=["inferno.webhooks"], concurrency=2)
        finished_before = metric(client, "inferno_jobs_finished_total", model="iris", status="succeeded")
        r = client.post("/jobs", json={**IRIS, "webhook_url": receiver.url}, headers={"X-Request-ID": "req-ops-1"})
        assert r.status_code == 202 and r.headers["X-Request-ID"] == "req-ops-1"
        job_id = r.get_json()["id"]
        wait_for(lambda: receiver.requests, timeout_s=30)

        # The API's lines, the worker's and the webhook worker's all name the same request.
        api_lines = [json.loads(x) for x in api_log.getvalue().splitlines() if x.startswith("{")]
        submitted = [x for x in api_lines if x.get("job_id") == job_id]
        assert submitted and all(x["request_id"] == "req-ops-1" for x in submitted)
        [request_line] = [x for x in submitted if x["message"] == "request"]  # one line per request, naming its job
        assert request_line["status"] == 202 and request_line["model"] == "iris" and request_line["path"] == "/jobs"
        assert request_line["priority"] == "normal" and request_line["type"] == "predict"

        def lines(process, message):
            found = []
            for raw in process.log_path.read_text().splitlines():
                if raw.startswith("{"):
                    entry = json.loads(raw)
                    if entry.get("job_id") == job_id and entry["message"] == message:
                        found.append(entry)
            return found
        [finished] = wait_for(lambda: lines(worker, "job finished"))
        assert finished["request_id"] == "req-ops-1" and finished["model"] == "iris" and finished["duration_ms"] >= 0
        assert finished["tenant"] == "local" and finished["priority"] == "normal"
        [attempt] = wait_for(lambda: lines(hooks, "webhook attempt"))
        assert attempt["request_id"] == "req-ops-1" and attempt["outcome"] == "delivered"

        # Worker-side metrics reach /metrics through Redis.
        assert metric(client, "inferno_jobs_finished_total", model="iris", status="succeeded") == finished_before + 1
        assert metric(client, "inferno_job_run_seconds_count", model="iris", status="succeeded") >= 1
        assert metric(client, "inferno_workers_online", pool="cpu") >= 1
        wait_for(lambda: metric(client, "inferno_webhook_deliveries_total", event="job.succeeded",
                                outcome="delivered") >= 1)
        workers = client.get("/workers").get_json()
        node = next(w for w in workers["workers"] if w["name"] == worker.hostname)
        assert node["healthy"] and node["jobs_done"] >= 1 and "iris" in node["models"]
    finally:
        receiver.close()


def test_pause_purge_retry_resume_through_the_api(api, live_settings, start_worker):
    start_worker(concurrency=1)
    assert api.post(f"/queues/{LOW}/pause").status_code == 200
    time.sleep(1.5)  # the worker's consumer sync stops consuming the queue
    expiring = api.post("/jobs", json={**IRIS, "priority": "low", "ttl_s": 1}).get_json()
    doomed = api.post("/jobs", json={**IRIS, "priority": "low"}).get_json()
    normal = api.post("/jobs", json=IRIS).get_json()
    wait_for(lambda: api.get(f"/jobs/{normal['id']}").get_json()["status"] == "succeeded")  # other queues run
    time.sleep(1.2)
    queue = next(q for q in api.get("/queues").get_json()["queues"] if q["name"] == LOW)
    assert queue["paused"] and queue["consumers"] == 0
    assert api.get(f"/jobs/{doomed['id']}").get_json()["status"] == "queued"
    assert api.get(f"/jobs/{expiring['id']}").get_json()["status"] == "expired"
    purged = api.post(f"/queues/{LOW}/purge").get_json()
    assert purged["canceled_job_ids"] == [doomed["id"]]
    assert api.get(f"/jobs/{doomed['id']}").get_json()["status"] == "canceled"
    assert api.post(f"/queues/{LOW}/resume").status_code == 200
    time.sleep(1.5)  # consuming again; the retried job has a ttl_s of 1 s
    retried = api.post(f"/jobs/{expiring['id']}/retry")  # expired -> queued again (its ttl_s counts from now)
    assert retried.status_code == 202 and retried.get_json()["status"] == "queued"
    done = wait_for(lambda: (j := api.get(f"/jobs/{expiring['id']}").get_json())["status"] == "succeeded" and j,
                    timeout_s=20)
    assert done["id"] == expiring["id"] and done["result"]["predictions"]
    assert [a["outcome"] for a in done["attempt_history"]] == ["succeeded"]
    assert api.post(f"/jobs/{expiring['id']}/retry").status_code == 409  # succeeded stays succeeded
    assert api.get(f"/jobs/{doomed['id']}").get_json()["status"] == "canceled"

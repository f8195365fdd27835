"""The core loop, real end to end: API -> Redis -> Celery priority queues -> ONNX Runtime worker -> GET /jobs/<id>.

A private redis-server, real `celery worker` processes and real ONNX models.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import numpy as np
import pytest

from inferno_jobs.apikey import KeyRing
from inferno_jobs.config import Settings
from inferno_jobs.demo.tabular import reference
from tests.conftest import wait_for
from tests.slow_model import build_slow_model

pytestmark = pytest.mark.integration


def submit(api, body, **kw):
    r = api.post("/jobs", json=body, **kw)
    assert r.status_code == 202, r.get_json()
    return r.get_json()


def wait_done(api, job_id, timeout_s=60, **kw):
    def done():
        job = api.get(f"/jobs/{job_id}", **kw).get_json()
        return job if job["status"] not in ("queued", "running") else None
    return wait_for(done, timeout_s)


@pytest.fixture(scope="module")
def slow_model(model_dir):
    return build_slow_model(model_dir)


def test_predict_jobs_give_what_scikit_learn_gives(api, start_worker):
    start_worker()
    iris_model, iris = reference("iris")
    diabetes_model, diabetes = reference("diabetes")
    rows = iris.data[::10].tolist()
    iris_job = submit(api, {"type": "predict", "model": "iris", "input": {"features": rows}})
    reg_job = submit(api, {"type": "predict", "model": "diabetes", "input": {"features": diabetes.data[:5].tolist()}})
    done = wait_done(api, iris_job["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1 and done["error"] is None
    assert done["started_at"] and done["finished_at"] and done["queue_position"] is None
    assert done["result"]["predictions"] == iris_model.predict(np.asarray(rows, dtype=np.float32)).tolist()
    np.testing.assert_allclose(done["result"]["probabilities"],
                               iris_model.predict_proba(np.asarray(rows, dtype=np.float32)), atol=1e-5)
    reg = wait_done(api, reg_job["id"])
    np.testing.assert_allclose(reg["result"]["predictions"],
                               diabetes_model.predict(diabetes.data[:5].astype(np.float32)), rtol=1e-4)
    models = {m["id"]: m for m in api.get("/models").get_json()["models"]}
    assert models["iris"]["loaded"] is True


@pytest.mark.parametrize("max_batch_size", [1, 64], ids=["one-by-one", "micro-batched"])
def test_a_high_job_overtakes_300_queued_low_jobs(api, start_worker, model_dir, live_settings, max_batch_size):
    name = f"iris-b{max_batch_size}"
    if not (model_dir / name).exists():
        shutil.copytree(model_dir / "iris", model_dir / name)
        config = json.loads((model_dir / name / "config.json").read_text())
        (model_dir / name / "config.json").write_text(json.dumps({**config, "max_batch_size": max_batch_size}))
    # Distinct rows: identical ones would share one run (the result cache) instead of each taking its turn.
    def body(i):
        return {"type": "predict", "model": name, "input": {"features": [[5.1, 3.5, 1.4, 0.2 + i / 1000]]}}
    lows = [submit(api, {**body(i), "priority": "low"})["id"] for i in range(300)]
    high = submit(api, {**body(300), "priority": "high"})
    assert high["queue_position"] == 0
    start_worker()
    finished_high = wait_done(api, high["id"])["finished_at"]
    wait_for(lambda: all(api.get(f"/jobs/{i}").get_json()["status"] == "succeeded" for i in lows[-5:]), 120)
    finished_low = [api.get(f"/jobs/{i}").get_json()["finished_at"] for i in lows]
    before = sum(f < finished_high for f in finished_low)
    # Prefetch 1 with late acks: only what the two pool children already hold may finish first.
    assert before <= 2 * max_batch_size + 2, before


def test_a_canceled_queued_job_never_runs(api, start_worker):
    job = submit(api, {"type": "predict", "model": "iris", "input": {"features": [[1, 2, 3, 4]]}})
    assert api.post(f"/jobs/{job['id']}/cancel").get_json()["status"] == "canceled"
    start_worker()
    marker = submit(api, {"type": "predict", "model": "iris", "input": {"features": [[1, 2, 3, 4]]}})
    wait_done(api, marker["id"])  # the canceled job's message was consumed before this one
    final = api.get(f"/jobs/{job['id']}").get_json()
    assert final["status"] == "canceled" and final["attempts"] == 0 and final["started_at"] is None
    assert final["result"] is None


def test_unknown_id_and_another_tenants_id_are_404(redis_server, model_dir, live_redis, start_worker):
    from api import create_app

    settings = Settings.from_env({}, redis_url=redis_server.url, model_dir=model_dir, auth="required",
                                 key_prefix="tenants", reconcile_interval_s=1)
    api = create_app(settings, redis_client=live_redis).test_client()
    ring = KeyRing(live_redis, settings)
    key_a, key_b = ring.create("a")[0], ring.create("b")[0]
    start_worker(settings)
    a = {"Authorization": f"Bearer {key_a}"}
    job = submit(api, {"type": "predict", "model": "iris", "input": {"features": [[1, 2, 3, 4]]}}, headers=a)
    assert wait_done(api, job["id"], headers=a)["status"] == "succeeded"
    assert api.get("/jobs/job_01unknown", headers=a).status_code == 404
    foreign = api.get(f"/jobs/{job['id']}", headers={"X-API-Key": key_b})
    assert foreign.status_code == 404 and foreign.get_json()["error"]["code"] == "JOB_NOT_FOUND"


def test_a_job_not_started_within_ttl_expires_and_never_runs(api, start_worker, live_settings, live_redis):
    job = submit(api, {"type": "predict", "model": "iris", "input": {"features": [[1, 2, 3, 4]]}, "ttl_s": 1})
    # No worker until its ttl_s has passed: the status still becomes expired (the reconciler of a worker started
    # later, or a read), and the worker never runs it.
    time.sleep(1.2)
    start_worker()
    expired = wait_for(lambda: (j := api.get(f"/jobs/{job['id']}").get_json())["status"] == "expired" and j, 10)
    assert expired["attempts"] == 0 and expired["error"]["code"] == "TIMEOUT"


def test_expired_by_the_reconciler_without_any_read(api, start_worker, live_settings, live_redis):
    from inferno_jobs.store import JobStore

    start_worker(queues=["inferno.gpu.high"])  # a worker that will never see the cpu queues
    job = submit(api, {"type": "predict", "model": "iris", "input": {"features": [[1, 2, 3, 4]]}, "ttl_s": 1})
    store = JobStore(live_redis, live_settings)
    wait_for(lambda: json.loads(live_redis.get(store.keys.job(job["id"])))["status"] == "expired", 15)


def test_a_run_longer_than_timeout_s_is_timed_out(api, start_worker, model_dir):
    # Three times the slow model's work: that one ran in under a second in a fast phase of this machine, and
    # well under the hard limit (timeout_s + 15 s) in a slow one
    build_slow_model(model_dir, name="slower", iterations=1200)
    start_worker()
    job = submit(api, {"type": "predict", "model": "slower", "input": {"features": [[1, 2, 3, 4]]}, "timeout_s": 1})
    done = wait_done(api, job["id"], timeout_s=60)
    assert done["status"] == "timed_out" and done["error"]["code"] == "TIMEOUT"


def test_a_worker_killed_mid_job_still_gets_the_job_to_succeeded(api, start_worker, slow_model):
    worker = start_worker()
    job = submit(api, {"type": "predict", "model": "slow", "input": {"features": [[1, 2, 3, 4]]}})
    running = wait_for(lambda: (j := api.get(f"/jobs/{job['id']}").get_json())["status"] == "running" and j, 30)
    owner_pid = int(running["attempt_history"][-1]["worker"].rsplit(":", 1)[1])
    assert owner_pid in worker.children()
    os.kill(owner_pid, signal.SIGKILL)
    done = wait_done(api, job["id"], timeout_s=90)
    assert done["status"] == "succeeded" and done["result"]["predictions"] == [10.0]
    assert done["attempts"] == 2
    assert [a["outcome"] for a in done["attempt_history"]] == ["worker_lost", "succeeded"]

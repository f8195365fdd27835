"""Runtime configuration against a real worker: POST /config changes the micro-batch size a running worker uses,
POST /restart rebuilds every worker process's engine without losing queued jobs, and seed 001's model endpoints
round trip."""

from __future__ import annotations

import time

import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.integration

IRIS = {"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}}
NORMAL = "inferno.cpu.normal"
CONFIG_SETTLE_S = 1.5  # workers re-read the config at most once a second; the consumer sync polls every second


def succeeded(api, ids, timeout_s=60):
    return wait_for(lambda: all(api.get(f"/jobs/{i}").get_json()["status"] == "succeeded" for i in ids), timeout_s)


def micro_batches(store, ids) -> list[int]:
    """Sizes of the engine calls that ran ``ids``: a micro-batch's jobs are finished in one transaction, so their
    finish times lie microseconds apart; separate runs are at least a task round trip (milliseconds) apart."""
    ends = sorted(store.get(i).attempts[-1].finished_at for i in ids)
    sizes = [1]
    for before, after in zip(ends, ends[1:]):
        if after - before < 0.001:
            sizes[-1] += 1
        else:
            sizes.append(1)
    return sizes


def burst(api, n) -> list[str]:
    """``n`` iris jobs (distinct inputs: none is answered from the result cache) that all wait in the queue
    before the worker sees any of them."""
    assert api.post(f"/queues/{NORMAL}/pause").status_code == 200
    time.sleep(CONFIG_SETTLE_S)
    ids = [api.post("/jobs", json={**IRIS, "input": {"features": [[5.0 + i / 100, 3.5, 1.4, 0.2]]}}).get_json()["id"]
           for i in range(n)]
    assert api.post(f"/queues/{NORMAL}/resume").status_code == 200
    return ids


def test_post_config_changes_the_batch_size_a_running_worker_uses(api, live_app, start_worker):
    start_worker(concurrency=1)
    store = live_app.extensions["inferno"].store
    warm = api.post("/jobs", json=IRIS).get_json()["id"]
    succeeded(api, [warm])

    changed = api.post("/config", json={"max_batch_size": 1}).get_json()
    assert changed["updated_parameters"] == {"max_batch_size": 1}
    time.sleep(CONFIG_SETTLE_S)
    one_by_one = burst(api, 6)
    succeeded(api, one_by_one)
    assert micro_batches(store, one_by_one) == [1] * 6

    api.post("/config", json={"max_batch_size": 8, "batch_timeout": 0.05})
    time.sleep(CONFIG_SETTLE_S)
    batched = burst(api, 16)
    succeeded(api, batched)
    sizes = micro_batches(store, batched)
    assert sum(sizes) == 16 and max(sizes) <= 8 and len(sizes) < 16, sizes

    api.post("/config", json={"enable_batching": False})
    time.sleep(CONFIG_SETTLE_S)
    alone = burst(api, 4)
    succeeded(api, alone)
    assert micro_batches(store, alone) == [1] * 4


def test_restart_rebuilds_every_process_engine_and_keeps_queued_jobs(api, start_worker):
    import socket

    worker = start_worker(concurrency=2)
    assert api.post("/models/iris/load").status_code == 200  # pinned: every process loads it again after a restart
    processes = sorted(f"{socket.gethostname()}:{pid}" for pid in worker.children())
    assert api.post(f"/queues/{NORMAL}/pause").status_code == 200
    time.sleep(CONFIG_SETTLE_S)
    queued = [api.post("/jobs", json=IRIS).get_json()["id"] for _ in range(3)]

    answer = api.post("/restart")
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["success"] is True and body["state"] == "READY"
    assert body["workers"] == processes and body["pending"] == []
    assert all(api.get(f"/jobs/{i}").get_json()["status"] == "queued" for i in queued)
    wait_for(lambda: {m["id"]: m for m in api.get("/models").get_json()["models"]}["iris"]["loaded"])

    assert api.post(f"/queues/{NORMAL}/resume").status_code == 200
    after = api.post("/jobs", json={**IRIS, "input": {"features": [[6.7, 3.0, 5.2, 2.3]]}}).get_json()["id"]
    succeeded(api, queued + [after])


def test_seed_model_endpoints_round_trip(api, start_worker):
    start_worker()
    loaded = api.post("/models/load", json={"model_path": "diabetes", "model_type": "sklearn",
                                             "compile_model": True})
    assert loaded.status_code == 200, loaded.get_json()
    body = loaded.get_json()
    assert body["success"] is True and body["model_type"] == "predict" and body["model_path"].endswith("/diabetes")
    assert body["model_info"]["loaded"] is True and body["model_info"]["input_features"] == 10
    listed = {m["id"]: m for m in api.get("/models").get_json()["models"]}
    assert listed["diabetes"]["loaded"] is True

    validated = api.post("/validate", json={"model": "diabetes"}).get_json()
    assert validated["success"] is True and validated["model_type"] == "predict"
    assert validated["results"]["valid"] is True and validated["results"]["latency_ms"] > 0

    unloaded = api.delete("/models")
    assert unloaded.status_code == 200 and "diabetes" in unloaded.get_json()["models"]
    listed = {m["id"]: m for m in api.get("/models").get_json()["models"]}
    assert listed["diabetes"]["loaded"] is False

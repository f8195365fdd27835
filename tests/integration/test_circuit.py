"""Circuit breakers through the whole system: a model whose file is broken fails its jobs on a real worker, its
circuit opens and new jobs get 503; once the file is fixed and the cooldown is over, a probe job succeeds and
closes it."""

from __future__ import annotations

import shutil

import pytest

from inferno_jobs.config import Settings
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

JOB = {"type": "predict", "model": "flaky", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}}


def finished(api, job_id: str, timeout_s: float = 60) -> dict:
    return wait_for(lambda: (j := api.get(f"/jobs/{job_id}").get_json())["status"] not in ("queued", "running")
                    and j, timeout_s)


def circuit(api) -> dict:
    return next(m for m in api.get("/models").get_json()["models"] if m["id"] == "flaky")["circuit"]


def test_a_failing_model_opens_its_circuit_and_recovers(live_settings, live_redis, start_worker, model_dir, tmp_path):
    from api import create_app

    models = tmp_path / "models"
    shutil.copytree(model_dir / "iris", models / "flaky")
    good = (models / "flaky" / "model.onnx").read_bytes()
    (models / "flaky" / "model.onnx").write_bytes(b"this is not an ONNX model")
    settings = Settings.from_env({}, **{**live_settings.__dict__, "model_dir": models,
                                        "circuit_failure_threshold": 3, "circuit_open_s": 4})
    api = create_app(settings, redis_client=live_redis).test_client()
    start_worker(settings, concurrency=1)

    for n in range(3):
        r = api.post("/jobs", json=JOB)
        assert r.status_code == 202, r.get_json()
        job = finished(api, r.get_json()["id"])
        assert job["status"] == "failed" and job["error"]["code"] == "MODEL_NOT_LOADED"
        assert circuit(api)["consecutive_failures"] == n + 1

    assert circuit(api)["state"] == "open"
    refused = api.post("/jobs", json=JOB)
    assert refused.status_code == 503 and 1 <= int(refused.headers["Retry-After"]) <= 4
    assert refused.get_json()["error"]["code"] == "MODEL_NOT_LOADED"
    assert refused.get_json()["error"]["details"]["circuit"] == "open"
    metrics = api.get("/metrics").get_data(as_text=True)
    assert 'inferno_circuit_breaker_state{model="flaky"} 2.0' in metrics
    assert 'inferno_circuit_breaker_open_total{model="flaky"} 1.0' in metrics

    (models / "flaky" / "model.onnx").write_bytes(good)  # the operator fixes the model
    wait_for(lambda: circuit(api)["state"] == "half_open", timeout_s=10)
    probe = api.post("/jobs", json=JOB)
    assert probe.status_code == 202, probe.get_json()
    job = finished(api, probe.get_json()["id"])
    assert job["status"] == "succeeded" and job["result"]["labels"] == ["setosa"]
    assert circuit(api) == {"state": "closed", "consecutive_failures": 0, "opened_at": None, "retry_after_s": None}
    again = api.post("/jobs", json=JOB)
    assert again.status_code == 202
    assert finished(api, again.get_json()["id"])["status"] == "succeeded"
    assert 'inferno_circuit_breaker_state{model="flaky"} 0.0' in api.get("/metrics").get_data(as_text=True)

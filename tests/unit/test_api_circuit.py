"""Circuit breakers through the API on fakeredis: an open circuit answers 503 ``MODEL_NOT_LOADED`` with
``Retry-After`` on every surface that creates work, ``GET /models`` and ``/metrics`` show it, a half-open probe runs
(through the real BatchRunner, inline) and closes it, and an admin can reset it."""

from __future__ import annotations

import time

from inferno_jobs.apikey import KeyRing
from inferno_jobs.circuit import CircuitBreaker
from inferno_jobs.errors import ModelNotLoaded
from tests.unit.compat_fixtures import app_of, compat_models, fake_run, inline  # noqa: F401
from workers.batching import BatchRunner

IRIS = {"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}}
BROKEN = [ModelNotLoaded("model 'iris' failed to load")]


def open_circuit(app, model: str, ago_s: float = 0.0) -> CircuitBreaker:
    """Fail ``model`` until its circuit opens, ``ago_s`` seconds in the past."""
    svc = app.extensions["inferno"]
    breaker = CircuitBreaker(svc.redis, svc.settings, clock=lambda: time.time() - ago_s)
    for _ in range(svc.settings.circuit_failure_threshold):
        breaker.record(model, BROKEN)
    return breaker


def test_an_open_circuit_refuses_new_jobs_with_503_and_retry_after(app_of, inline):
    app = app_of()
    client = app.test_client()
    open_circuit(app, "iris")
    r = client.post("/jobs", json=IRIS)
    assert r.status_code == 503 and 29 <= int(r.headers["Retry-After"]) <= 30
    error = r.get_json()["error"]
    assert error["code"] == "MODEL_NOT_LOADED" and "circuit breaker is open" in error["message"]
    assert error["details"]["model"] == "iris" and error["details"]["circuit"] == "open"
    assert error["details"]["retry_after_s"] == int(r.headers["Retry-After"])
    assert inline.sent == []  # nothing accepted, nothing enqueued
    # Other models are not affected.
    assert client.post("/jobs", json={**IRIS, "model": "diabetes",
                                      "input": {"features": [[0.0] * 10]}}).status_code == 202


def test_an_open_circuit_refuses_openai_calls_and_batches(app_of, inline):
    app = app_of()
    client = app.test_client()
    open_circuit(app, "minilm")
    r = client.post("/v1/embeddings", json={"model": "minilm", "input": "hello"})
    assert r.status_code == 503 and 1 <= int(r.headers["Retry-After"]) <= 30
    assert r.get_json()["error"]["type"] == "server_error" and "circuit breaker" in r.get_json()["error"]["message"]
    batch = client.post("/batches", json={"model": "minilm", "type": "embedding",
                                          "requests": [{"custom_id": "a", "input": "hello"}]})
    assert batch.status_code == 503 and batch.get_json()["error"]["code"] == "MODEL_NOT_LOADED"
    assert "Retry-After" in batch.headers
    assert inline.sent == []


def test_models_and_metrics_show_the_circuit(app_of):
    app = app_of()
    client = app.test_client()
    open_circuit(app, "iris")
    models = {m["id"]: m for m in client.get("/models").get_json()["models"]}
    iris = models["iris"]["circuit"]
    assert iris["state"] == "open" and iris["consecutive_failures"] == 5 and 29 <= iris["retry_after_s"] <= 30
    assert iris["opened_at"].endswith("Z")
    assert models["diabetes"]["circuit"] == {"state": "closed", "consecutive_failures": 0, "opened_at": None,
                                             "retry_after_s": None}
    text = client.get("/metrics").get_data(as_text=True)
    assert 'inferno_circuit_breaker_state{model="iris"} 2.0' in text
    assert 'inferno_circuit_breaker_state{model="diabetes"} 0.0' in text
    assert 'inferno_circuit_breaker_open_total{model="iris"} 1.0' in text


def test_after_the_cooldown_one_probe_job_runs_and_closes_the_circuit(app_of, inline):
    app = app_of()
    client = app.test_client()
    open_circuit(app, "iris", ago_s=31)
    inline.run = False  # the probe stays queued: nobody else may pass meanwhile
    probe = client.post("/jobs", json=IRIS)
    assert probe.status_code == 202
    second = client.post("/jobs", json=IRIS)
    assert second.status_code == 503 and second.get_json()["error"]["details"]["circuit"] == "half_open"
    iris = next(m for m in client.get("/models").get_json()["models"] if m["id"] == "iris")
    assert iris["circuit"]["state"] == "half_open"
    BatchRunner(inline.store, fake_run, model_config=inline.models.get).run(probe.get_json()["id"])
    assert client.get(f"/jobs/{probe.get_json()['id']}").get_json()["status"] == "succeeded"
    iris = next(m for m in client.get("/models").get_json()["models"] if m["id"] == "iris")
    assert iris["circuit"]["state"] == "closed" and iris["circuit"]["consecutive_failures"] == 0
    assert client.post("/jobs", json=IRIS).status_code == 202


def test_an_admin_resets_a_circuit(app_of, fake_redis):
    app = app_of(auth="required")
    ring = KeyRing(fake_redis, app.extensions["inferno"].settings)
    user, _, _ = ring.create("user")
    admin, _, _ = ring.create("ops", admin=True)
    client = app.test_client()
    open_circuit(app, "iris")
    refused = client.post("/models/iris/circuit/reset", headers={"X-API-Key": user})
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "AUTHORIZATION_FAILED"
    assert client.post("/models/nope/circuit/reset", headers={"X-API-Key": admin}).status_code == 404
    r = client.post("/models/iris/circuit/reset", headers={"X-API-Key": admin})
    assert r.status_code == 200 and r.get_json()["id"] == "iris"
    assert r.get_json()["circuit"]["state"] == "closed"
    assert client.post("/jobs", json=IRIS, headers={"X-API-Key": user}).status_code == 202


def test_the_reset_route_is_in_the_openapi_document(app_of):
    spec = app_of().test_client().get("/openapi.json").get_json()
    assert "post" in spec["paths"]["/models/{model_id}/circuit/reset"]
    assert "circuit" in spec["components"]["schemas"]["ModelResponse"]["properties"]

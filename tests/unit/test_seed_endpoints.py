"""The seeds' informational endpoints and fields on fakeredis: ``GET /`` (seeds 001, 004), ``GET /services`` and
``GET /stats`` (seed 002), seed 000's fields on /health, /models and the load/unload answers, its
``details.available_models``, and seed 001's ``POST /feature-importance`` refusing an empty row with a 400."""

from __future__ import annotations

import json

import pytest

import api.models
from inferno_jobs.job import Job, JobStatus, JobType, Priority, now
from inferno_jobs.metrics import record_worker_jobs
from tests.unit.compat_fixtures import app_of, compat_models, inline  # noqa: F401


def report_loaded(client, *models, worker="h:1"):
    svc = client.application.extensions["inferno"]
    # A worker that applies each model command the moment it is made: its generation is past any command's.
    svc.redis.hset(svc.store.keys.loaded_models(), worker, json.dumps({"models": list(models), "reported_at": now(),
                                                                       "generation": 2 ** 31}))


def heartbeat(client, name, last_seen):
    svc = client.application.extensions["inferno"]
    svc.redis.hset(svc.store.keys.workers(), name, json.dumps(
        {"hostname": name, "pool": "cpu", "queues": ["inferno.cpu.high"], "last_seen": last_seen}))


def test_root_answers_seed_001s_information_without_a_key(make_app):
    client = make_app(auth="required").test_client()
    r = client.get("/")
    assert r.status_code == 200
    body = r.get_json()
    assert {"name", "version", "description", "status", "docs_url"} <= set(body)
    assert body["name"] == "inferno-jobs" and body["status"] == "running" and body["version"]
    assert client.get(body["docs_url"]).status_code == 200  # the documentation it points to exists
    assert "security" not in client.get("/openapi.json").get_json()["paths"]["/"]["get"]


def test_services_and_stats_show_the_worker_nodes_in_seed_002s_shape(client, fake_redis):
    store = client.application.extensions["inferno"].store
    heartbeat(client, "cpu@box", now())
    heartbeat(client, "cpu@gone", now() - 3600)
    j = store.create(Job.create(type=JobType.PREDICT, model="iris", tenant="t", input={"features": [[1.0]]},
                                priority=Priority.HIGH, pool="cpu", ttl_s=60, timeout_s=60))[0]
    store.claim(j.id, "box:1")
    done = [store.finish(j.id, JobStatus.SUCCEEDED, result={"predictions": [0]})]
    record_worker_jobs(fake_redis, store.keys, "cpu@box", done, process="box:1", models=["iris"])

    services = client.get("/services").get_json()
    assert services["total"] == 2
    box = next(s for s in services["services"] if s["name"] == "cpu@box")
    assert box == {"name": "cpu@box", "host": "box", "pool": "cpu", "healthy": True, "models": ["iris"],
                   "queues": ["inferno.cpu.high"]}
    assert next(s for s in services["services"] if s["name"] == "cpu@gone")["healthy"] is False

    stats = client.get("/stats").get_json()
    assert stats["total_services"] == 2 and stats["healthy_services"] == 1
    box = next(s for s in stats["services"] if s["name"] == "cpu@box")
    assert box["healthy"] is True and box["request_count"] == 1 and box["error_count"] == 0
    assert box["response_time"] >= 0
    workers = {w["name"]: w for w in client.get("/workers").get_json()["workers"]}  # the same data
    assert box["request_count"] == workers["cpu@box"]["jobs_done"]


def test_services_and_stats_need_a_key_when_auth_is_on(make_app):
    client = make_app(auth="required").test_client()
    assert client.get("/services").status_code == 401 and client.get("/stats").status_code == 401


def test_health_counts_the_models_loaded(client):
    assert client.get("/health").get_json()["models_loaded"] == 0
    report_loaded(client, "iris", "diabetes")
    report_loaded(client, "iris", worker="h:2")
    body = client.get("/health").get_json()
    assert body["models_loaded"] == 2
    assert {"status", "version", "uptime_seconds", "redis", "workers", "queues"} <= set(body)  # API.md's, kept


def test_models_have_seed_000s_name_and_context_size(app_of):
    models = {m["id"]: m for m in app_of().test_client().get("/models").get_json()["models"]}
    assert models["tiny-gpt"]["name"] == "tiny-gpt" and models["tiny-gpt"]["context_size"] == 256
    assert models["minilm"]["context_size"] == 256  # the embedding worker's default input length, in tokens
    assert "context_size" not in models["iris"]  # a tabular model has no context
    assert {"id", "type", "device", "loaded", "size_bytes", "max_batch_size", "capabilities"} <= set(models["iris"])


def test_load_and_unload_answer_seed_000s_fields_beside_the_model(client, monkeypatch):
    monkeypatch.setattr(api.models, "COMMAND_WAIT_S", 0)
    report_loaded(client, "iris")
    loaded = client.post("/models/iris/load")
    assert loaded.status_code == 200
    body = loaded.get_json()
    assert body["status"] == "loaded" and body["model_id"] == "iris" and body["load_time_ms"] >= 0
    assert body["id"] == "iris" and body["loaded"] is True
    assert "memory_usage_bytes" not in body  # workers do not report it: no made-up number
    still = client.post("/models/iris/unload")  # the worker still reports it loaded
    assert still.status_code == 202 and still.get_json()["status"] == "unloading"
    report_loaded(client)
    unloaded = client.post("/models/iris/unload").get_json()
    assert unloaded["status"] == "unloaded" and unloaded["model_id"] == "iris" and "load_time_ms" not in unloaded
    waiting = client.post("/models/diabetes/load")
    assert waiting.status_code == 202 and waiting.get_json()["status"] == "loading"


def test_delete_models_says_model_unloaded_successfully_for_several_models(client, monkeypatch):
    monkeypatch.setattr(api.models, "COMMAND_WAIT_S", 0)
    monkeypatch.setattr("api.seed_models.loaded_models", lambda: {"iris", "diabetes"})
    monkeypatch.setattr("api.seed_models.apply_command", lambda names, action: True)  # the workers dropped both
    body = client.delete("/models").get_json()
    assert body == {"success": True, "message": "Model unloaded successfully", "models": ["diabetes", "iris"]}


@pytest.mark.parametrize("method, path, body", [
    ("post", "/models/gpt-5/load", None),
    ("post", "/models/gpt-5/unload", None),
    ("post", "/inference", {"model": "gpt-5", "prompt": "Hi"}),
    ("post", "/models/load", {"model_path": "gpt-5"}),
])
def test_model_not_found_lists_available_models_under_both_names(app_of, method, path, body):
    r = getattr(app_of().test_client(), method)(path, json=body)
    assert r.status_code == 404
    error = r.get_json()["error"]
    assert error["code"] == "MODEL_NOT_FOUND"
    assert error["details"]["available_models"] == error["details"]["available"]
    assert "iris" in error["details"]["available_models"]


@pytest.mark.parametrize("features", [[[]], [[], []], [[1, 2], []]])
def test_feature_importance_refuses_empty_rows_like_predict(app_of, features):
    client = app_of().test_client()
    for path in ("/feature-importance", "/predict"):
        r = client.post(path, json={"model": "iris", "features": features})
        assert r.status_code == 400, (path, r.get_json())
        assert r.get_json()["error"]["code"] == "INVALID_REQUEST"
        assert r.get_json()["error"]["details"]["field"] == "features"

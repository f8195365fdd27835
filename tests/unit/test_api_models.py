"""``POST /models/<id>/load|unload`` on fakeredis, with worker reports written as the model watchers write them:
an answer waits for every live worker process to have applied the command, and a load a worker failed is a 503
naming the worker and its reason."""

from __future__ import annotations

import json

import pytest

import api.models
from inferno_jobs.job import now


def report(client, worker, models, generation, load_errors=None):
    svc = client.application.extensions["inferno"]
    svc.redis.hset(svc.store.keys.loaded_models(), worker, json.dumps(
        {"models": models, "reported_at": now(), "generation": generation, "load_errors": load_errors or {}}))


@pytest.fixture
def admin(make_app, monkeypatch):
    monkeypatch.setattr(api.models, "COMMAND_WAIT_S", 0)
    return make_app().test_client()


def test_a_report_from_before_the_command_does_not_answer_it(admin):
    report(admin, "w1", ["iris"], generation=0)  # loaded, but it has not seen this command yet
    waiting = admin.post("/models/iris/load")
    assert waiting.status_code == 202 and waiting.get_json()["status"] == "loading"
    report(admin, "w1", ["iris"], generation=2)  # the second command (this one's generation) applied
    done = admin.post("/models/iris/load")
    assert done.status_code == 200 and done.get_json()["status"] == "loaded"


def test_a_load_a_worker_failed_answers_503_with_the_worker_and_its_reason(admin):
    report(admin, "w1", ["iris"], generation=1)
    error = {"code": "MODEL_NOT_LOADED", "message": "model 'iris' failed to load: INVALID_PROTOBUF", "at": now() + 1}
    report(admin, "w2", [], generation=1, load_errors={"iris": error})
    r = admin.post("/models/iris/load")
    assert r.status_code == 503
    body = r.get_json()["error"]
    assert body["code"] == "MODEL_NOT_LOADED" and "failed to load in worker w2" in body["message"]
    assert body["details"] == {"worker": "w2", "error": "model 'iris' failed to load: INVALID_PROTOBUF"}
    stale = {**error, "at": now() - 60}  # a failure from before the command is not its answer
    report(admin, "w2", [], generation=9, load_errors={"iris": stale})
    report(admin, "w1", ["iris"], generation=9)
    assert admin.post("/models/iris/load").status_code == 200


def gpu_model(model_dir) -> str:
    """iris's files as a gpu model (the model directory is shared by the session's tests)."""
    import shutil

    target = model_dir / "iris-gpu"
    if not target.exists():
        shutil.copytree(model_dir / "iris", target)
        config = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, "device": "gpu"}))
    return target.name


def test_a_gpu_model_with_no_gpu_worker_is_not_loaded_by_cpu_workers_nor_validated(admin, model_dir, monkeypatch):
    gpu_model(model_dir)
    monkeypatch.setattr(api.models, "COMMAND_WAIT_S", 30)  # an answer must not wait for a pool with no worker
    report(admin, "cpu:1", ["iris"], generation=2 ** 31)  # a cpu worker, up to date
    svc = admin.application.extensions["inferno"]
    svc.redis.hset(svc.store.keys.workers(), "cpu@h", json.dumps({"hostname": "cpu@h", "pool": "cpu",
                                                                  "last_seen": now()}))
    load = admin.post("/models/iris-gpu/load")
    assert load.status_code == 202 and load.get_json()["status"] == "loading"  # applied once a gpu worker runs
    validate = admin.post("/models/iris-gpu/validate")
    assert validate.status_code == 503 and validate.headers["Retry-After"] == "30"
    assert "no gpu worker is online" in validate.get_json()["error"]["message"]
    assert not svc.celery.sent  # no validation message left waiting for nobody


def test_a_model_watcher_loads_only_its_own_pools_models(model_dir, fake_redis, settings):
    from inferno_jobs.store import JobStore
    from workers.model_watch import ModelWatcher, request_command

    gpu_model(model_dir)
    store = JobStore(fake_redis, settings)
    loaded = []

    class Engine:
        pool = "cpu"

        def __init__(self):
            from inferno_jobs.model import ModelRepository
            self.repository = ModelRepository(model_dir)

        def runner(self, name, recheck=False):
            loaded.append(name)

    class Runtime:
        def __init__(self):
            self.store, self.engine, self.model_generation = store, Engine(), 0

        def report_loaded(self, worker):
            pass

    for name in ("iris", "iris-gpu"):
        request_command(store, name, "load")
    ModelWatcher(Runtime(), "cpu:1").sync()
    assert loaded == ["iris"]


@pytest.mark.parametrize("change, problem", [
    ({"max_batch_size": -5}, "max_batch_size must be a whole number >= 1"),
    ({"max_batch_size": 0}, "max_batch_size must be a whole number >= 1"),
    ({"device": "tpu"}, "device must be one of cpu, gpu, cuda"),
    ({"n_features": "four"}, "n_features must be a whole number >= 1"),
    ({"type": "embedding", "pooling": "bogus"}, "pooling must be one of mean, cls"),
    ({"type": "embedding", "max_tokens": 0}, "max_tokens must be a whole number >= 1"),
    ({"file": "../tiny-gpt/model.onnx"}, "file must be a path inside the model's directory"),
    ({"file": "/etc/passwd"}, "file must be a path inside the model's directory"),
    ({"type": "completion", "chat_template": "{% for %}"}, "chat_template is not a valid Jinja template"),
    ({"type": "translation"}, "type must be one of predict, embedding, completion"),
    ({"max_batch_wait_ms": "soon"}, "max_batch_wait_ms must be a number >= 0"),
])
def test_a_config_no_worker_could_serve_is_refused_where_it_is_read(admin, model_dir, change, problem):
    import shutil

    target = model_dir / "iris-broken"  # the model directory is the session's: removed again
    shutil.copytree(model_dir / "iris", target)
    try:
        config = json.loads((model_dir / "iris" / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, **change}))
        r = admin.post("/jobs", json={"type": "predict", "model": "iris-broken",
                                      "input": {"features": [[1, 2, 3, 4]]}})
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "MODEL_NOT_FOUND"
        message = r.get_json()["error"]["message"]
        assert "config.json is broken" in message and problem in message
        assert "iris-broken" not in {m["id"] for m in admin.get("/models").get_json()["models"]}
    finally:
        shutil.rmtree(target)

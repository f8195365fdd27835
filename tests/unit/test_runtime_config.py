"""Runtime configuration (GET/POST /config), POST /restart and seed 001's model endpoints, on fakeredis."""

import dataclasses
import json

import pytest

import api.models
from inferno_jobs import engine_config
from inferno_jobs.apikey import KeyRing
from inferno_jobs.engine_config import EngineConfigReader
from inferno_jobs.job import Job, JobStatus, JobType
from inferno_jobs.model import ModelRepository
from inferno_jobs.store import JobStore
from tests.conftest import RecordingCelery
from workers.batching import BatchRunner

IRIS = {"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}}
ROW = [5.1, 3.5, 1.4, 0.2]


def test_get_config_shows_the_deployment_settings_until_changed(make_app):
    client = make_app(engine_max_batch_size=16, engine_enable_throttling=True).test_client()
    body = client.get("/config").get_json()
    assert body["current_config"] == {
        "enable_batching": True, "max_batch_size": 16, "batch_timeout": 0.0, "enable_cache": True,
        "max_cache_entries": 1000, "cache_ttl_seconds": 3600, "enable_quantization": False, "num_threads": 0,
        "enable_throttling": True, "max_concurrent_requests": 100}
    assert body["timestamp"]


def test_post_config_reports_only_what_changed_and_every_reader_sees_it(client):
    answer = client.post("/config", json={"max_batch_size": 128, "batch_timeout": 0.02, "enable_cache": True})
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["success"] is True and body["message"] == "Configuration updated successfully"
    # enable_cache was already true: not an update.
    assert body["updated_parameters"] == {"max_batch_size": 128, "batch_timeout": 0.02}
    assert body["current_config"]["max_batch_size"] == 128 and body["current_config"]["batch_timeout"] == 0.02
    assert body["current_config"]["max_cache_entries"] == 1000
    assert client.get("/config").get_json()["current_config"] == body["current_config"]
    again = client.post("/config", json={"max_batch_size": 128, "num_threads": 2}).get_json()
    assert again["updated_parameters"] == {"num_threads": 2}
    assert again["current_config"]["max_batch_size"] == 128


@pytest.mark.parametrize("payload, field", [
    ({"max_batch_size": 4097}, "max_batch_size"),
    ({"max_batch_size": -1}, "max_batch_size"),
    ({"max_batch_size": "8"}, "max_batch_size"),
    ({"max_batch_size": 2.5}, "max_batch_size"),
    ({"max_batch_size": True}, "max_batch_size"),
    ({"batch_timeout": 10.5}, "batch_timeout"),
    ({"batch_timeout": "0.1"}, "batch_timeout"),
    ({"enable_batching": 1}, "enable_batching"),
    ({"enable_batching": "yes"}, "enable_batching"),
    ({"max_cache_entries": -5}, "max_cache_entries"),
    ({"cache_ttl_seconds": 0}, "cache_ttl_seconds"),
    ({"num_threads": 257}, "num_threads"),
    ({"max_concurrent_requests": 0}, "max_concurrent_requests"),
    ({"enable_quantization": True}, "enable_quantization"),
    ({"max_batchsize": 8}, "max_batchsize"),
])
def test_bad_config_is_a_400_naming_the_field_and_changes_nothing(client, payload, field):
    answer = client.post("/config", json={"enable_throttling": True, **payload})
    assert answer.status_code == 400
    error = answer.get_json()["error"]
    assert error["code"] == "INVALID_REQUEST" and field in error["details"]
    assert client.get("/config").get_json()["current_config"]["enable_throttling"] is False


def test_config_changes_and_restart_need_an_admin_key(make_app, fake_redis):
    app = make_app(auth="required")
    ring = KeyRing(fake_redis, app.extensions["inferno"].settings)
    user, _, _ = ring.create("team")
    admin, _, _ = ring.create("ops", admin=True)
    client = app.test_client()
    assert client.get("/config").status_code == 401
    assert client.get("/config", headers={"X-API-Key": user}).status_code == 200
    refused = client.post("/config", json={"max_batch_size": 4}, headers={"X-API-Key": user})
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "AUTHORIZATION_FAILED"
    assert client.post("/restart", headers={"X-API-Key": user}).status_code == 403
    assert client.post("/config", json={"max_batch_size": 4}, headers={"X-API-Key": admin}).status_code == 200


# -- the workers use the live config ------------------------------------------------------------------------------

class CountingRun:
    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, model, inputs):
        self.calls.append(len(inputs))
        return [{"ok": True}] * len(inputs)


def queued_jobs(store, n):
    return [store.create(Job.create(type=JobType.PREDICT, model="iris", tenant="t", input={"features": [ROW]}))[0]
            for _ in range(n)]


@pytest.mark.parametrize("change, calls", [({}, [5]), ({"max_batch_size": 2}, [2, 2, 1]),
                                           ({"enable_batching": False}, [1] * 5)])
def test_batch_runner_uses_the_live_batch_size(fake_redis, settings, change, calls):
    store = JobStore(fake_redis, settings)
    engine_config.save(fake_redis, store.keys, change)
    reader = EngineConfigReader(fake_redis, store.keys, settings)
    run = CountingRun()
    runner = BatchRunner(store, run, model_config=ModelRepository(settings.model_dir).get, engine_config=reader)
    jobs = queued_jobs(store, 5)
    for job in jobs:
        runner.run(job.id)
    assert run.calls == calls
    assert all(store.get(j.id).status is JobStatus.SUCCEEDED for j in jobs)


def test_a_config_change_reaches_a_running_worker_within_its_cache_age(fake_redis, settings):
    store = JobStore(fake_redis, settings)
    reader = EngineConfigReader(fake_redis, store.keys, settings, max_age_s=0)
    run = CountingRun()
    runner = BatchRunner(store, run, model_config=ModelRepository(settings.model_dir).get, engine_config=reader)
    runner.run(queued_jobs(store, 3)[0].id)
    engine_config.save(fake_redis, store.keys, {"max_batch_size": 1})
    for job in queued_jobs(store, 2):
        runner.run(job.id)
    assert run.calls == [3, 1, 1]


def test_new_sessions_take_the_live_thread_count(settings):
    from workers.engine import Engine

    live = [engine_config.EngineConfig.defaults(settings)]
    engine = Engine(settings, engine_config=lambda: live[0])
    live[0] = dataclasses.replace(live[0], num_threads=3)
    assert engine.session_options().intra_op_num_threads == 3


def test_prompt_file_batches_fan_out_in_chunks_of_the_live_batch_size(client, celery_stub):
    client.post("/config", json={"max_batch_size": 2})
    answer = client.post("/batches", json={"model": "iris", "requests": [{"features": [ROW]}] * 5})
    assert answer.status_code == 202
    assert len([s for s in celery_stub.sent if s["name"] == "inferno.run_batch_chunk"]) == 3


def test_throttling_refuses_jobs_past_max_concurrent_requests(client):
    client.post("/config", json={"enable_throttling": True, "max_concurrent_requests": 2})
    assert [client.post("/jobs", json=IRIS).status_code for _ in range(2)] == [202, 202]
    refused = client.post("/jobs", json=IRIS)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "2"
    error = refused.get_json()["error"]
    assert error["code"] == "RATE_LIMIT_EXCEEDED" and error["details"]["limit"] == "max_concurrent_requests"
    client.post("/config", json={"enable_throttling": False})
    assert client.post("/jobs", json=IRIS).status_code == 202


# -- POST /restart --------------------------------------------------------------------------------------------------

class StubRuntime:
    """What a ModelWatcher needs of a worker process's runtime."""

    def __init__(self, store):
        self.store = store
        self.restarts = 0

    def restart_engine(self):
        self.restarts += 1


def worker_process(app, fake_redis, name):
    """A pool process that reported in just now, with its model watcher."""
    from inferno_jobs.job import now
    from workers.model_watch import ModelWatcher

    store = app.extensions["inferno"].store
    fake_redis.hset(store.keys.loaded_models(), name, json.dumps({"models": [], "reported_at": now(), "pool": "cpu"}))
    watcher = ModelWatcher(StubRuntime(store), name)
    watcher.restart_if_asked()  # a new process acknowledges the restart count it started with
    return watcher


def test_restart_rebuilds_every_process_engine_and_is_ready_once_all_confirmed(make_app, fake_redis):
    import threading

    app = make_app()
    watchers = [worker_process(app, fake_redis, "h:1"), worker_process(app, fake_redis, "h:2")]
    stop = threading.Event()

    def poll():  # the watchers' daemon threads
        while not stop.wait(0.05):
            for watcher in watchers:
                watcher.restart_if_asked()
    thread = threading.Thread(target=poll)
    thread.start()
    try:
        answer = app.test_client().post("/restart")
    finally:
        stop.set()
        thread.join()
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["success"] is True and body["state"] == "READY" and body["message"]
    assert body["workers"] == ["h:1", "h:2"] and body["pending"] == []
    assert [w.runtime.restarts for w in watchers] == [1, 1]
    assert [w.restart_if_asked() for w in watchers] == [False, False]  # once per restart


def test_restart_is_202_restarting_while_a_process_has_not_confirmed(make_app, fake_redis, monkeypatch):
    import api.runtime_config

    monkeypatch.setattr(api.runtime_config, "RESTART_WAIT_S", 0.3)
    app = make_app()
    worker_process(app, fake_redis, "h:1")
    answer = app.test_client().post("/restart")
    assert answer.status_code == 202
    body = answer.get_json()
    assert body["state"] == "RESTARTING" and body["pending"] == ["h:1"] and body["success"] is False


def test_restart_with_no_worker_running_says_so(client):
    answer = client.post("/restart")
    assert answer.status_code == 202 and "no worker process" in answer.get_json()["message"]


# -- seed 001's model endpoints -----------------------------------------------------------------------------------

class ValidatingCelery(RecordingCelery):
    """Answers a validation like a worker would."""

    def __init__(self, redis_client):
        super().__init__()
        self.redis = redis_client

    def send_task(self, name, args=None, kwargs=None, **options):
        super().send_task(name, args, kwargs, **options)
        if name == "inferno.validate_model":
            self.redis.rpush(args[1], json.dumps({"id": args[0], "type": "predict", "valid": True,
                                                  "latency_ms": 3.2, "worker": "h:1"}))


def cpu_worker_online(app, fake_redis):
    from inferno_jobs.job import now

    fake_redis.hset(app.extensions["inferno"].store.keys.workers(), "cpu@h", json.dumps(
        {"hostname": "cpu@h", "pool": "cpu", "queues": ["inferno.cpu.high"], "last_seen": now()}))


@pytest.fixture
def seed_client(make_app, fake_redis, monkeypatch):
    monkeypatch.setattr(api.models, "COMMAND_WAIT_S", 0)
    app = make_app()
    app.extensions["inferno"].celery = ValidatingCelery(fake_redis)
    cpu_worker_online(app, fake_redis)
    return app.test_client()


def report_loaded(client, fake_redis, *models):
    from inferno_jobs.job import now

    keys = client.application.extensions["inferno"].store.keys
    # A worker that applies each model command the moment it is made: its generation is past any command's.
    fake_redis.hset(keys.loaded_models(), "h:1", json.dumps({"models": list(models), "reported_at": now(),
                                                             "generation": 2 ** 31}))


@pytest.mark.parametrize("path", ["iris", "iris/model.onnx", "ABS/iris", "ABS/iris/config.json"])
def test_seed_load_accepts_a_model_name_or_a_path_inside_model_dir(seed_client, fake_redis, model_dir, path):
    report_loaded(seed_client, fake_redis, "iris")
    answer = seed_client.post("/models/load", json={"model_path": path.replace("ABS", str(model_dir)),
                                                    "model_type": "sklearn", "compile_model": True})
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["success"] is True and body["message"] == "Model loaded successfully"
    assert body["model_path"] == str((model_dir / "iris").resolve()) and body["model_type"] == "predict"
    assert body["model_info"]["input_features"] == 4 and body["model_info"]["loaded"] is True
    commands = fake_redis.hgetall(seed_client.application.extensions["inferno"].store.keys.model_commands())
    assert json.loads(commands[b"iris"])["action"] == "load"


def test_seed_load_answers_202_while_workers_are_still_loading(seed_client):
    answer = seed_client.post("/models/load", json={"model_path": "diabetes"})
    assert answer.status_code == 202 and answer.get_json()["model_info"]["loaded"] is False


@pytest.mark.parametrize("body, status, code", [
    ({"model_path": "../../etc/passwd"}, 400, "INVALID_REQUEST"),
    ({"model_path": "/etc"}, 400, "INVALID_REQUEST"),
    ({"model_path": "iris\u0000"}, 400, "INVALID_REQUEST"),  # found by schemathesis: was a 500
    ({"model_path": "no-such-model"}, 404, "MODEL_NOT_FOUND"),
    ({"model_path": "iris", "model_type": "embedding"}, 400, "INVALID_REQUEST"),
    ({"model_path": "iris", "model_type": "pytorch"}, 400, "INVALID_REQUEST"),
    ({"model_type": "sklearn"}, 400, "INVALID_REQUEST"),
])
def test_seed_load_refuses_bad_paths_and_types(seed_client, body, status, code):
    answer = seed_client.post("/models/load", json=body)
    assert answer.status_code == status and answer.get_json()["error"]["code"] == code


def test_seed_delete_models_unloads_one_or_every_loaded_model(seed_client, fake_redis):
    keys = seed_client.application.extensions["inferno"].store.keys
    report_loaded(seed_client, fake_redis)
    one = seed_client.delete("/models?model=iris")  # no worker holds it: said so, and it is unpinned still
    assert one.status_code == 200 and one.get_json() == {"success": True, "message": "No model was loaded",
                                                         "models": []}
    assert json.loads(fake_redis.hget(keys.model_commands(), "iris"))["action"] == "unload"
    report_loaded(seed_client, fake_redis, "iris", "diabetes")
    every = seed_client.delete("/models")  # the fake worker still reports both loaded: not yet applied
    assert every.status_code == 202 and every.get_json()["models"] == ["diabetes", "iris"]
    assert json.loads(fake_redis.hget(keys.model_commands(), "diabetes"))["action"] == "unload"
    assert seed_client.delete("/models?model=nope").status_code == 404


def test_seed_validate_runs_a_sample_in_a_worker(seed_client):
    answer = seed_client.post("/validate", json={"model": "iris"})
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["success"] is True and body["model_type"] == "predict" and body["timestamp"]
    assert body["results"]["valid"] is True and body["results"]["input_features"] == 4
    assert body["results"]["model"] == "iris"
    # No body and no default model among several: the caller must name one.
    unnamed = seed_client.post("/validate")
    assert unnamed.status_code == 400 and "iris" in unnamed.get_json()["error"]["details"]["available"]


def test_seed_validate_defaults_to_the_default_predict_model(make_app, fake_redis):
    app = make_app(default_predict_model="diabetes")
    app.extensions["inferno"].celery = ValidatingCelery(fake_redis)
    cpu_worker_online(app, fake_redis)
    body = app.test_client().post("/validate").get_json()
    assert body["results"]["model"] == "diabetes" and body["success"] is True


def test_quantization_at_startup_is_refused_with_the_reason():
    from inferno_jobs.config import Settings

    with pytest.raises(ValueError, match="ENGINE_ENABLE_QUANTIZATION is not supported"):
        Settings.from_env({"ENGINE_ENABLE_QUANTIZATION": "1"})

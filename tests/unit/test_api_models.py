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

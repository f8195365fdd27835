"""Redis down or frozen: a 503 to retry (with Retry-After), never a 500, and on WS /ws an error message; a job
whose store call timed out is named; a model with a broken config.json is left out of listings and named when
asked for."""

import json
import shutil

import pytest
import redis
from simple_websocket import ConnectionClosed

from api import cache as result_cache
from api import websocket
from inferno_jobs.apikey import KeyRing
from inferno_jobs.store import JobStore

IRIS = {"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}}


def refuse(*args, **kwargs):
    raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


def test_an_unreachable_redis_is_a_503_with_retry_after_on_the_native_api(client, monkeypatch):
    monkeypatch.setattr(JobStore, "get", refuse)
    r = client.get("/jobs/job_01abc")
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    error = r.get_json()["error"]
    assert error["code"] == "MODEL_NOT_LOADED" and "Redis" in error["message"]


def test_an_unreachable_redis_is_a_503_in_openais_shape_on_v1(client, monkeypatch, minilm_dir):
    monkeypatch.setattr(result_cache, "create", refuse)
    r = client.post("/v1/embeddings", json={"model": "minilm", "input": "hello"})
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert r.get_json()["error"]["type"] == "server_error" and "Redis" in r.get_json()["error"]["message"]


class ScriptedSocket:
    """A WebSocket whose client sends ``messages``, then goes away."""

    connected = True

    def __init__(self, messages):
        self.messages = [json.dumps(m) for m in messages]
        self.sent = []

    def receive(self, timeout=None):
        if not self.messages:
            raise ConnectionClosed()
        return self.messages.pop(0)

    def send(self, text):
        self.sent.append(json.loads(text))


def test_an_unreachable_redis_is_an_error_message_on_ws_and_the_socket_stays_open(make_app, monkeypatch):
    app = make_app(auth="required")
    monkeypatch.setattr(KeyRing, "authenticate", refuse)
    ws = ScriptedSocket([{"type": "auth", "id": "a1", "token": "ij_key"}, {"type": "ping", "id": "p1"}])
    with app.test_request_context("/ws"), pytest.raises(ConnectionClosed):  # the client leaving ends it
        websocket.Session(ws, app).run()
    refused, pong = ws.sent
    assert refused["type"] == "error" and refused["id"] == "a1" and refused["code"] == "MODEL_NOT_LOADED"
    assert "Redis" in refused["message"]
    assert pong["type"] == "pong" and pong["id"] == "p1"


def test_a_key_in_the_headers_with_redis_unreachable_is_an_error_message_not_a_broken_socket(make_app,
                                                                                              monkeypatch):
    app = make_app(auth="required")
    monkeypatch.setattr(KeyRing, "authenticate", refuse)
    ws = ScriptedSocket([{"type": "ping", "id": "p1"}])
    with app.test_request_context("/ws", headers={"Authorization": "Bearer ij_key"}), \
            pytest.raises(ConnectionClosed):
        websocket.Session(ws, app).run()
    refused, pong = ws.sent
    assert refused["type"] == "error" and refused["code"] == "MODEL_NOT_LOADED" and "Redis" in refused["message"]
    assert pong["type"] == "pong" and pong["id"] == "p1"


def test_a_socket_closing_with_redis_unreachable_leaves_its_jobs_to_run_and_still_closes(make_app, monkeypatch):
    app = make_app()
    job_id = app.test_client().post("/jobs", json=IRIS).get_json()["id"]
    monkeypatch.setattr(JobStore, "cancel", refuse)
    with app.test_request_context("/ws"), pytest.raises(ConnectionClosed):  # the close, not Redis's error
        session = websocket.Session(ScriptedSocket([]), app)
        session.jobs = {"r1": job_id}  # as if the socket had submitted it
        session.run()
    assert app.extensions["inferno"].store.get(job_id).status.value == "queued"  # not lost: a worker runs it


@pytest.mark.parametrize("lost", [redis.exceptions.TimeoutError("Timeout reading from socket"),
                                  redis.exceptions.ConnectionError("Connection closed by server.")])
def test_a_submit_whose_answer_was_lost_names_the_job_it_may_have_stored(client, monkeypatch, lost):
    def timed_out(*args, **kwargs):
        raise lost
    monkeypatch.setattr(result_cache, "create", timed_out)
    r = client.post("/jobs", json=IRIS)
    assert r.status_code == 503
    error = r.get_json()["error"]
    job_id = error["details"]["job_id"]
    assert job_id.startswith("job_") and f"GET /jobs/{job_id}" in error["message"]


@pytest.fixture
def broken_model(model_dir):
    path = model_dir / "broken-config"
    shutil.copytree(model_dir / "iris", path)
    (path / "config.json").write_text("{garbage")
    yield "broken-config"
    shutil.rmtree(path)


def test_a_broken_config_leaves_the_others_listed_and_names_the_problem(client, broken_model, caplog):
    listed = client.get("/models")
    assert listed.status_code == 200
    ids = {m["id"] for m in listed.get_json()["models"]}
    assert "iris" in ids and broken_model not in ids
    assert client.get("/v1/models").status_code == 200
    warned = [r for r in caplog.records if r.getMessage().startswith(f"model {broken_model} left out of the listing:")]
    assert len(warned) == 1 and warned[0].model == broken_model  # once per problem, not per listing
    r = client.post("/jobs", json={**IRIS, "model": broken_model})
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "MODEL_NOT_FOUND"
    assert "config.json is broken" in r.get_json()["error"]["message"]
    assert client.post("/jobs", json=IRIS).status_code == 202

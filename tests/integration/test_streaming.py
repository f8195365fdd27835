"""The seeds' endpoints and streaming through a real server and worker: every seed request as its document
writes it (adapted to the demo models), tokens over SSE and WebSocket as they are generated, and cancellation by
a WebSocket cancel message or a disconnecting SSE client; each under werkzeug (``inferno-jobs dev``) and under
gunicorn (``inferno-jobs api``, as deployed)."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.conftest import wait_for
from tests.integration.live_server import GunicornServer, LiveServer, slow_token_env

pytestmark = pytest.mark.integration


@pytest.fixture(params=["werkzeug", "gunicorn"])
def server(request, live_app, live_settings):
    s = LiveServer(live_app) if request.param == "werkzeug" else GunicornServer(live_settings)
    yield s
    s.close()


def sse_data(response):
    """The ``data:`` payloads of a streaming response, decoded, as they arrive."""
    for line in response.iter_lines(decode_unicode=True):
        if line and line.startswith("data: "):
            yield json.loads(line[6:])


def test_every_seed_endpoint_with_its_documented_request(server, start_worker, tinygpt_dir, minilm_dir):
    start_worker()
    url = server.url
    # seed 000: POST /inference
    r = requests.post(f"{url}/inference", json={"model": "tiny-gpt", "prompt": "What is the capital of France?",
                                                "max_tokens": 100, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
                                                "repeat_penalty": 1.1, "stop": ["\n", "###"], "stream": False},
                      timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny-gpt" and body["choices"][0]["index"] == 0 and "text" in body["choices"][0]
    assert body["usage"]["total_tokens"] > 0 and body["processing_time_ms"] >= 0
    # seed 000: POST /inference/stream — tokens as they come, then done
    with requests.post(f"{url}/inference/stream", json={"model": "tiny-gpt", "prompt": "Tell me a joke",
                                                        "max_tokens": 30, "stream": True, "seed": 1,
                                                        "temperature": 0.9}, stream=True, timeout=60) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = list(sse_data(r))
    tokens = [e for e in events if "token" in e]
    assert [t["index"] for t in tokens] == list(range(len(tokens))) and len(tokens) > 1
    assert events[-1]["done"] is True and events[-1]["finish_reason"] in ("stop", "length")
    # seed 000: POST /embeddings
    emb = requests.post(f"{url}/embeddings", json={"model": "minilm", "input": ["Hello world", "How are you?"],
                                                   "encoding_format": "float"}, timeout=60).json()
    assert [d["index"] for d in emb["data"]] == [0, 1] and len(emb["data"][0]["embedding"]) == 384
    # seed 001: POST /predict, /predict/batch, /predict/async (iris takes 4 features)
    one = requests.post(f"{url}/predict", json={"model": "iris", "features": [[5.1, 3.5, 1.4, 0.2]],
                                                "request_id": "optional-client-request-id"}, timeout=60).json()
    assert one["success"] is True and one["request_id"] == "optional-client-request-id"
    assert one["predictions"] == [[0]] and one["metadata"]["labels"] == ["setosa"]
    batch = requests.post(f"{url}/predict/batch", json={
        "model": "iris", "batch": [[[5.1, 3.5, 1.4, 0.2]], [[6.7, 3.0, 5.2, 2.3]], [[5.9, 3.0, 4.2, 1.5]]],
        "request_ids": ["id1", "id2", "id3"]}, timeout=60).json()
    assert [r["request_id"] for r in batch["results"]] == ["id1", "id2", "id3"]
    assert [r["predictions"] for r in batch["results"]] == [[[0]], [[2]], [[1]]]
    assert batch["metadata"]["success_rate"] == 1.0
    # (another row than /predict's: an identical one would be answered from the result cache)
    queued = requests.post(f"{url}/predict/async", json={"model": "iris", "features": [[5.0, 3.6, 1.4, 0.2]],
                                                         "request_id": "r1", "priority": "high",
                                                         "timeout_ms": 5000}, timeout=60)
    assert queued.status_code == 202 and queued.json()["status"] == "pending"
    job_id = queued.json()["job_id"]
    done = wait_for(lambda: (j := requests.get(f"{url}/jobs/{job_id}").json())["status"] == "succeeded" and j)
    assert done["result"]["predictions"] == [0] and done["metadata"] == {"request_id": "r1"}
    # GET /jobs/<id>/events of a finished job replays it
    with requests.get(f"{url}/jobs/{job_id}/events", stream=True, timeout=30) as r:
        replay = list(sse_data(r))
    assert [e["status"] for e in replay[:-1]] == ["queued", "running", "succeeded"]
    assert replay[-1]["id"] == job_id and replay[-1]["status"] == "succeeded"


def test_websocket_streams_tokens_and_cancels_mid_stream(server, start_worker, tinygpt_dir, tmp_path, live_app):
    websocket = pytest.importorskip("websocket", reason="websocket-client is in the dev extra")
    start_worker(extra_env=slow_token_env(tmp_path))
    ws = websocket.create_connection(server.url.replace("http", "ws") + "/ws", timeout=30)
    try:
        ws.send(json.dumps({"type": "auth", "token": "unused"}))
        assert json.loads(ws.recv()) == {"type": "auth", "authenticated": True}
        ws.send(json.dumps({"type": "ping", "id": "p1"}))
        assert json.loads(ws.recv())["type"] == "pong"
        # A short request runs to the end.
        ws.send(json.dumps({"type": "inference", "id": "short", "model": "tiny-gpt", "prompt": "The fox",
                            "max_tokens": 5, "stream": True}))
        messages = []
        while not messages or messages[-1]["type"] not in ("complete", "error"):
            messages.append(json.loads(ws.recv()))
        assert messages[-1]["type"] == "complete" and messages[-1]["finish_reason"] in ("stop", "length")
        tokens = [m["token"] for m in messages if m["type"] == "token"]
        assert tokens and "".join(tokens) == messages[-1]["text"]
        # A long one is canceled after three tokens.
        ws.send(json.dumps({"type": "inference", "id": "req_123", "model": "tiny-gpt", "prompt": "Once upon a time",
                            "max_tokens": 250, "temperature": 1.0, "seed": 3, "stream": True}))
        seen = []
        while len(seen) < 3:
            message = json.loads(ws.recv())
            assert message["type"] == "token" and message["id"] == "req_123"
            seen.append(message["token"])
        started = time.monotonic()
        ws.send(json.dumps({"type": "cancel", "id": "req_123"}))
        while (message := json.loads(ws.recv()))["type"] == "token":
            seen.append(message["token"])
        assert message["type"] == "complete" and message["finish_reason"] == "canceled"
        assert message["text"] == "".join(seen)  # the text so far
        assert time.monotonic() - started < 3 and len(seen) < 200
        job = live_app.test_client().get(f"/jobs/{message['job_id']}").get_json()
        assert job["status"] == "canceled" and job["priority"] == "high"
        ws.send("not json")
        assert json.loads(ws.recv())["code"] == "INVALID_REQUEST"
    finally:
        ws.close()


def test_a_disconnecting_sse_client_cancels_its_job(server, start_worker, tinygpt_dir, tmp_path, api):
    start_worker(extra_env=slow_token_env(tmp_path))
    r = requests.post(f"{server.url}/v1/completions", json={"model": "tiny-gpt", "prompt": "Once upon a time",
                                                           "max_tokens": 250, "temperature": 1.0, "seed": 3,
                                                           "stream": True}, stream=True, timeout=60)
    job_id = r.headers["X-Job-ID"]
    chunks = sse_data(r)
    for _ in range(3):
        assert next(chunks)["object"] == "text_completion"
    # Another client follows the same job over GET /jobs/<id>/events (following never cancels).
    follower = requests.get(f"{server.url}/jobs/{job_id}/events", stream=True, timeout=30)
    r.close()  # the streaming client goes away mid-generation
    job = wait_for(lambda: (j := api.get(f"/jobs/{job_id}").get_json())["status"] not in ("queued", "running")
                   and j, 10)
    assert job["status"] == "canceled"
    assert job["attempt_history"][-1]["outcome"] == "canceled"
    events = list(sse_data(follower))
    assert any("token" in e for e in events) and events[-1]["status"] == "canceled"


def test_websocket_inference_messages_count_against_the_keys_rate_limit(live_settings, live_redis, tinygpt_dir):
    websocket = pytest.importorskip("websocket", reason="websocket-client is in the dev extra")
    from api import create_app
    from inferno_jobs.apikey import KeyRing
    from inferno_jobs.config import Settings

    settings = Settings.from_env({}, **{**live_settings.__dict__, "auth": "required"})
    key, _, _ = KeyRing(live_redis, settings).create("ws", limits={"rpm": 2})
    server = LiveServer(create_app(settings, redis_client=live_redis))
    ws = websocket.create_connection(server.url.replace("http", "ws") + "/ws", timeout=30)
    try:
        ws.send(json.dumps({"type": "auth", "token": key}))
        assert json.loads(ws.recv()) == {"type": "auth", "authenticated": True}
        for n in range(3):  # no worker runs them: the first two wait queued, the third is over the limit
            ws.send(json.dumps({"type": "inference", "id": f"r{n}", "model": "tiny-gpt", "prompt": "Once",
                                "max_tokens": 2, "stream": True}))
        refused = json.loads(ws.recv())
        assert refused["type"] == "error" and refused["id"] == "r2", refused
        assert refused["code"] == "RATE_LIMIT_EXCEEDED" and refused["details"]["retry_after"] > 0
        ws.send(json.dumps({"type": "ping", "id": "p"}))  # the socket stays open
        assert json.loads(ws.recv())["type"] == "pong"
    finally:
        ws.close()
        server.close()


@pytest.mark.parametrize("through", ["auth message", "handshake header"])
def test_a_key_revoked_while_its_websocket_is_open_stops_working(live_settings, live_redis, tinygpt_dir, through):
    websocket = pytest.importorskip("websocket", reason="websocket-client is in the dev extra")
    from api import create_app
    from inferno_jobs.apikey import KeyRing
    from inferno_jobs.config import Settings
    from inferno_jobs.store import JobStore
    from tests.integration.test_limits import close_code

    settings = Settings.from_env({}, **{**live_settings.__dict__, "auth": "required"})
    ring = KeyRing(live_redis, settings)
    key, record, _ = ring.create("ws")
    server = LiveServer(create_app(settings, redis_client=live_redis))
    header = [f"X-API-Key: {key}"] if through == "handshake header" else []
    ws = websocket.create_connection(server.url.replace("http", "ws") + "/ws", timeout=30, header=header)
    inference = {"type": "inference", "model": "tiny-gpt", "prompt": "Once", "max_tokens": 2, "stream": True}
    try:
        if through == "auth message":
            ws.send(json.dumps({"type": "auth", "token": key}))
            assert json.loads(ws.recv()) == {"type": "auth", "authenticated": True}
        ws.send(json.dumps({**inference, "id": "before"}))  # no worker: it waits queued, and no message comes
        ws.send(json.dumps({"type": "ping", "id": "p"}))
        assert json.loads(ws.recv())["type"] == "pong"
        ring.revoke(record.id)
        ws.send(json.dumps({**inference, "id": "after"}))
        refused = json.loads(ws.recv())
        assert refused["type"] == "error" and refused["id"] == "after", refused
        assert refused["code"] == "AUTHENTICATION_FAILED"
        assert close_code(ws) == 1008  # policy violation, as for a failed auth message
        jobs, _ = JobStore(live_redis, settings).list(record.tenant, limit=10)
        assert len(jobs) == 1  # the one sent before the revoke (canceled as the socket closed)
    finally:
        ws.close()
        server.close()

"""CORS and compression on the production server (gunicorn, ``inferno-jobs api``) with a real worker: seed 004's
``/v1/infer`` examples, large JSON compressed, and every stream (SSE, WebSocket) going out uncompressed and
event by event even when the client accepts gzip and brotli."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.integration.live_server import GunicornServer, slow_token_env

pytestmark = pytest.mark.integration

ACCEPT_ALL = "gzip, deflate, br"
ORIGIN = "https://app.example.org"


@pytest.fixture
def server(live_settings):
    s = GunicornServer(live_settings)
    yield s
    s.close()


def test_seed_004_examples_stream_uncompressed_and_token_by_token(server, start_worker, tinygpt_dir, tmp_path):
    start_worker(extra_env=slow_token_env(tmp_path))
    r = requests.post(f"{server.url}/v1/infer", headers={"Authorization": "Bearer your-token", "Origin": ORIGIN},
                      json={"model": "tiny-gpt", "prompt": "Hello, world!",
                            "params": {"max_new_tokens": 12, "temperature": 0.7}}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny-gpt" and isinstance(body["output"], str) and body["usage"]["completion_tokens"] > 0
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    # The seed's curl: no Content-Type, Accept: text/event-stream; here also every encoding accepted.
    arrivals = []
    with requests.post(f"{server.url}/v1/infer/stream", data='{"model":"tiny-gpt","prompt":"Hello","params":'
                                                              '{"max_new_tokens":30,"seed":1,"temperature":0.9}}',
                       headers={"Accept": "text/event-stream", "Accept-Encoding": ACCEPT_ALL}, stream=True,
                       timeout=60) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert "Content-Encoding" not in r.headers
        buffer = b""
        for byte in r.raw.stream(1, decode_content=False):  # the bytes as they arrive on the socket
            buffer += byte
            if buffer.endswith(b"\n\n"):
                if buffer.startswith(b"data: "):
                    arrivals.append((time.monotonic(), json.loads(buffer[6:])))
                buffer = b""
    events = [e for _, e in arrivals]
    tokens = [e for e in events if "token" in e]
    assert len(tokens) > 5 and events[-1]["done"] is True
    # ~20 ms per token: had anything buffered the stream, the events would all arrive together at the end.
    assert arrivals[-1][0] - arrivals[0][0] > 0.1


def test_large_json_is_compressed_small_is_not_and_preflights_are_answered(server):
    big = requests.get(f"{server.url}/openapi.json", headers={"Accept-Encoding": "gzip"}, timeout=30)
    assert big.headers["Content-Encoding"] == "gzip" and big.json()["openapi"].startswith("3.")
    assert int(big.headers["Content-Length"]) < len(big.content)  # requests decoded it
    small = requests.get(f"{server.url}/health", headers={"Accept-Encoding": ACCEPT_ALL}, timeout=30)
    assert "Content-Encoding" not in small.headers
    preflight = requests.options(f"{server.url}/v1/infer", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"}, timeout=30)
    assert preflight.status_code == 200 and preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()


def test_a_websocket_upgrade_is_left_alone(server):
    websocket = pytest.importorskip("websocket")
    ws = websocket.create_connection(server.url.replace("http", "ws") + "/ws", timeout=30,
                                     header=[f"Accept-Encoding: {ACCEPT_ALL}", f"Origin: {ORIGIN}"])
    try:
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv())["type"] == "pong"
    finally:
        ws.close()

"""Size and time limits on a real server, under werkzeug (``inferno-jobs dev``) and gunicorn (``inferno-jobs api``):
``INFERNO_MAX_REQUEST_BYTES`` bounds chunked request bodies as it bounds ``Content-Length`` ones (413, never a
truncated body parsed as bad JSON); ``WS /ws`` bounds its messages (close code 1009) and closes sockets that do not
authenticate in time or whose ``auth`` fails (docs/security.md#inputs)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time
import urllib.request
from urllib.parse import urlsplit

import pytest

from inferno_jobs.apikey import KeyRing
from inferno_jobs.config import Settings
from tests.conftest import wait_for
from tests.integration.live_server import GunicornServer, LiveServer

pytestmark = pytest.mark.integration

websocket = pytest.importorskip("websocket", reason="websocket-client is in the dev extra")


def serve(kind: str, settings: Settings, redis_client):
    from api import create_app

    if kind == "werkzeug":
        return LiveServer(create_app(settings, redis_client=redis_client))
    return GunicornServer(settings)


def raw_request(url: str, path: str, body: bytes, *, chunked: bool, chunk_bytes: int = 1000,
                headers: dict | None = None) -> tuple[int, dict, bytes]:
    """``POST path`` on a raw socket, the body ``Transfer-Encoding: chunked`` (or with ``Content-Length``); the
    body is sent from a thread, as a client would go on sending while the server answers early."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    head = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}")

    def send() -> None:
        try:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
            if not chunked:
                sock.sendall(body)
                return
            for start in range(0, len(body), chunk_bytes):
                piece = body[start:start + chunk_bytes]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed before the whole body went out
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        reader = sock.makefile("rb")
        status = int(reader.readline().split()[1])
        response_headers = {}
        while (line := reader.readline().rstrip(b"\r\n")):
            name, _, value = line.decode("latin1").partition(":")
            response_headers[name.strip().lower()] = value.strip()
        content = reader.read(int(response_headers.get("content-length", "0")))
        return status, response_headers, content
    finally:
        sender.join(30)
        sock.close()


def job_body(size: int) -> bytes:
    """A ``POST /jobs`` body of exactly ``size`` bytes (valid JSON; its model does not exist)."""
    base = {"type": "completion", "model": "no-such-model", "input": {"prompt": "hi"}, "metadata": {"pad": ""}}
    pad = size - len(json.dumps(base).encode())
    base["metadata"]["pad"] = "a" * pad
    body = json.dumps(base).encode()
    assert len(body) == size
    return body


@pytest.fixture(params=["werkzeug", "gunicorn"])
def kind(request):
    return request.param


@pytest.fixture
def small_limit_server(kind, live_settings, live_redis):
    settings = Settings.from_env({}, **{**live_settings.__dict__, "max_request_bytes": 3000})
    server = serve(kind, settings, live_redis)
    yield server
    server.close()


@pytest.mark.parametrize("path", ["/jobs", "/v1/chat/completions", "/v1/embeddings", "/inference"])
def test_a_chunked_body_over_the_limit_is_413(small_limit_server, path):
    status, _, content = raw_request(small_limit_server.url, path, job_body(5000), chunked=True)
    assert status == 413, content
    error = json.loads(content)["error"]
    assert error["code"] in ("PAYLOAD_TOO_LARGE", "payload_too_large"), error
    assert "3,000 bytes" in error["message"]
    # The same body with Content-Length has always been a 413.
    assert raw_request(small_limit_server.url, path, job_body(5000), chunked=False)[0] == 413


def test_a_chunked_body_of_exactly_the_limit_is_read_whole(small_limit_server):
    status, _, content = raw_request(small_limit_server.url, "/jobs", job_body(3000), chunked=True)
    assert status == 404 and json.loads(content)["error"]["code"] == "MODEL_NOT_FOUND", content  # parsed, whole
    status, _, content = raw_request(small_limit_server.url, "/jobs", job_body(3001), chunked=True)
    assert status == 413, content


def test_a_chunked_body_over_the_default_limit_is_413(kind, live_settings, live_redis):
    server = serve(kind, live_settings, live_redis)
    try:
        body = job_body(11 * 1024 * 1024)
        status, _, content = raw_request(server.url, "/jobs", body, chunked=True, chunk_bytes=64 * 1024)
        assert status == 413 and json.loads(content)["error"]["code"] == "PAYLOAD_TOO_LARGE", content[:300]
    finally:
        server.close()


# -- WS /ws ------------------------------------------------------------------------------------------------------

@pytest.fixture
def auth_server(kind, live_settings, live_redis):
    """auth required, a 2 s auth timeout; yields (server, key)."""
    settings = Settings.from_env({}, **{**live_settings.__dict__, "auth": "required", "ws_auth_timeout_s": 2})
    key, _, _ = KeyRing(live_redis, settings).create("ws")
    server = serve(kind, settings, live_redis)
    yield server, key
    server.close()


def connect(server, **kwargs) -> contextlib.closing:
    """A ``WS /ws`` connection, closed when the ``with`` block ends."""
    return contextlib.closing(
        websocket.create_connection(server.url.replace("http", "ws") + "/ws", timeout=30, **kwargs))


def close_code(ws) -> int | None:
    """Read until the server closes; the close code it sent (None: the connection just ended)."""
    try:
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return int.from_bytes(data[:2], "big") if len(data) >= 2 else None
    except (websocket.WebSocketConnectionClosedException, ConnectionError):
        return None


def test_an_oversize_message_closes_the_socket_with_1009_even_before_auth(auth_server):
    server, key = auth_server
    with connect(server) as ws:  # no key
        ws.send(json.dumps({"type": "ping", "pad": "a" * (12 * 1024 * 1024)}))
        assert close_code(ws) == 1009
    # 1 MiB is the default: a message just under it is answered (a key in the handshake this time).
    with connect(server, header=[f"Authorization: Bearer {key}"]) as ws:
        pad = 1024 * 1024 - len(json.dumps({"type": "ping", "pad": ""})) - 10
        ws.send(json.dumps({"type": "ping", "pad": "a" * pad}))
        assert json.loads(ws.recv())["type"] == "pong"
        # Under the limit in characters, over it in UTF-8 bytes.
        ws.send(json.dumps({"type": "ping", "pad": "\u00e9" * (600 * 1024)}, ensure_ascii=False))
        assert close_code(ws) == 1009


def jobs_of(server, key: str) -> dict[str, str]:
    """The key's jobs as ``GET /jobs`` lists them: id -> status."""
    request = urllib.request.Request(f"{server.url}/jobs?limit=100", headers={"X-API-Key": key})
    with urllib.request.urlopen(request, timeout=10) as response:
        return {job["id"]: job["status"] for job in json.load(response)["data"]}


@pytest.fixture
def completion_model(model_dir):
    """A completion model's config.json alone: the API never loads a model, and no worker runs here."""
    path = model_dir / "limits-completion"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"type": "completion"}))
    yield path.name
    shutil.rmtree(path)


def test_a_socket_closed_for_an_oversize_message_cancels_its_jobs(auth_server, completion_model):
    # Repeated: the server's wait for the next message missed the close about one time in three (its thread was
    # then held for good and the socket's jobs were never cancelled). The jobs stay queued: no worker runs.
    server, key = auth_server
    for attempt in range(6):
        before = set(jobs_of(server, key))
        with connect(server, header=[f"Authorization: Bearer {key}"]) as ws:
            ws.send(json.dumps({"type": "inference", "id": "r", "model": completion_model, "prompt": "hi"}))
            (job_id,) = wait_for(lambda: set(jobs_of(server, key)) - before, 10)
            ws.send(json.dumps({"type": "ping", "pad": "a" * (2 * 1024 * 1024)}))
            assert close_code(ws) == 1009
        wait_for(lambda: jobs_of(server, key)[job_id] == "canceled", 10)


def test_a_socket_that_does_not_authenticate_in_time_is_closed(auth_server):
    server, key = auth_server
    with connect(server) as ws:
        started = time.monotonic()
        ws.send(json.dumps({"type": "ping"}))  # pings are answered, but do not extend the deadline
        assert json.loads(ws.recv())["type"] == "pong"
        refused = json.loads(ws.recv())
        assert refused["type"] == "error" and refused["code"] == "AUTHENTICATION_FAILED", refused
        assert "INFERNO_WS_AUTH_TIMEOUT_S" in refused["message"]
        assert close_code(ws) == 1008
        assert 1.5 < time.monotonic() - started < 10
    # An authenticated socket outlives the timeout.
    with connect(server) as ws:
        ws.send(json.dumps({"type": "auth", "token": key}))
        ws.send(json.dumps({"type": "ping", "id": "p0"}))  # sent at once, as the seed's client does
        assert json.loads(ws.recv()) == {"type": "auth", "authenticated": True}
        assert json.loads(ws.recv())["id"] == "p0"
        time.sleep(3)
        ws.send(json.dumps({"type": "ping", "id": "p1"}))
        assert json.loads(ws.recv())["id"] == "p1"


def test_a_failed_auth_closes_the_socket_even_after_a_good_one(auth_server):
    server, key = auth_server
    with connect(server) as ws:
        ws.send(json.dumps({"type": "auth", "token": key}))
        assert json.loads(ws.recv())["authenticated"] is True
        ws.send(json.dumps({"type": "auth", "token": ["x"]}))
        refused = json.loads(ws.recv())
        assert refused["type"] == "error" and refused["code"] == "AUTHENTICATION_FAILED", refused
        assert close_code(ws) == 1008  # not answered as the first key any more

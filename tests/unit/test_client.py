"""The Python client (inferno_jobs/client.py): every failure is an InfernoError, Retry-After is read, ids stay one
path segment, and a batch wait ends on every terminal status. Against the real API app on a socket (fakeredis,
a recording Celery) or, for answers the app cannot be made to give on cue, a scripted HTTP stub."""

from __future__ import annotations

import json
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from inferno_jobs.client import Client, ConnectionFailed, retry_after_s, segment
from inferno_jobs.errors import (InfernoError, InternalError, JobNotFound, ModelNotLoaded, NotFound,
                                 RateLimitExceeded, Timeout)
from inferno_jobs.redis_server import free_port
from tests.integration.live_server import LiveServer

IRIS_ROW = {"features": [[5.1, 3.5, 1.4, 0.2]]}


class Stub:
    """An HTTP server that answers every request from ``script``: ``(status, headers, body)`` tuples, the last
    one repeated; ``delay_s`` before each answer. Records each request's method and raw path."""

    def __init__(self, script, delay_s: float = 0):
        self.script, self.requests = list(script), []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                stub.requests.append((self.command, self.path))
                time.sleep(delay_s)
                status, headers, body = stub.script.pop(0) if len(stub.script) > 1 else stub.script[0]
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer  # noqa: N815 (http.server's naming)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    made = []

    def make(script, delay_s=0):
        made.append(Stub(script, delay_s))
        return made[-1]
    yield make
    for server in made:
        server.close()


@pytest.fixture
def live(make_app):
    server = LiveServer(make_app())
    yield server
    server.close()


def error_body(code, message="no", details=None):
    return {"error": {"code": code, "message": message, "details": details}}


def batch(status):
    return {"id": "batch_1", "status": status, "request_counts": {"total": 1, "completed": 0, "failed": 0}}


# -- no answer ------------------------------------------------------------------------------------------------

def test_an_api_that_cannot_be_reached_is_a_connection_failed_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = Client(url)
    for call in (lambda: client.get("job_1"), lambda: client.submit("predict", "iris", IRIS_ROW),
                 lambda: client.list_batches(), lambda: list(client.batch_results("batch_1"))):
        with pytest.raises(ConnectionFailed) as raised:
            call()
        assert isinstance(raised.value, InternalError) and isinstance(raised.value, InfernoError)
        assert url in raised.value.message and "refused" in raised.value.message.lower()
    with pytest.raises(ConnectionFailed, match="localhost:8000"):  # a URL without its scheme
        Client("localhost:8000").get("job_1")


def test_an_api_that_does_not_answer_in_time_is_a_timeout(stub):
    slow = stub([(200, {}, {})], delay_s=1)
    with pytest.raises(Timeout, match=r"did not answer GET /jobs/job_1 within 0.2 s"):
        Client(slow.url, timeout_s=0.2).get("job_1")


def test_an_answer_that_is_not_json_is_an_internal_error_not_a_decode_error(stub):
    other = stub([(200, {"Content-Type": "text/html"}, b"<html>hello</html>")])
    with pytest.raises(InternalError, match="not JSON"):
        Client(other.url).get("job_1")


# -- error answers ------------------------------------------------------------------------------------------

def test_every_error_class_an_answer_can_raise_is_importable_from_the_client():
    from inferno_jobs import client
    from inferno_jobs.errors import ERRORS_BY_CODE

    assert all(getattr(client, cls.__name__) is cls for cls in ERRORS_BY_CODE.values())


def test_retry_after_fills_retry_after_s_on_a_429_and_a_503(stub):
    limited = stub([(429, {"Retry-After": "58"}, error_body("RATE_LIMIT_EXCEEDED"))])
    with pytest.raises(RateLimitExceeded) as raised:
        Client(limited.url).submit("predict", "iris", IRIS_ROW)
    assert raised.value.retry_after_s == 58
    later = formatdate(time.time() + 120, usegmt=True)  # Retry-After may be an HTTP date too
    busy = stub([(503, {"Retry-After": later}, error_body("MODEL_NOT_LOADED"))])
    with pytest.raises(ModelNotLoaded) as raised:
        Client(busy.url).get("job_1")
    assert 110 <= raised.value.retry_after_s <= 121
    plain = stub([(503, {"Retry-After": "soon"}, b"down for maintenance")])
    with pytest.raises(InfernoError) as raised:
        Client(plain.url).get("job_1")
    assert raised.value.retry_after_s is None and "HTTP 503" in raised.value.message


def test_a_retry_after_date_without_a_zone_is_utc_whatever_the_local_zone(monkeypatch):
    """``-0000`` parses to a date without a zone; it used to be read as local time by the webhook deliverer."""
    from inferno_jobs import delivery

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        in_a_minute = formatdate(time.time() + 60)  # "... -0000"
        assert delivery.retry_after_s is retry_after_s and 55 <= retry_after_s(in_a_minute) <= 60
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_real_rate_limit_answer_carries_its_retry_after(make_app):
    server = LiveServer(make_app(rate_limit_rpm=1, rate_limit_by_ip=True))  # no keys: limits per client address
    try:
        client = Client(server.url)
        client.submit("predict", "iris", IRIS_ROW)
        with pytest.raises(RateLimitExceeded) as raised:
            client.submit("predict", "iris", IRIS_ROW)
        assert 1 <= raised.value.retry_after_s <= 60
    finally:
        server.close()


# -- ids in paths -------------------------------------------------------------------------------------------

def test_an_id_is_one_path_segment_so_a_crafted_one_is_an_unknown_id(live, tmp_path):
    client = Client(live.url)
    job = client.submit("predict", "iris", IRIS_ROW)
    lines = tmp_path / "rows.jsonl"
    lines.write_text(json.dumps({"input": IRIS_ROW}) + "\n")
    made = client.submit_batch(str(lines), "iris", type="predict")
    with pytest.raises(NotFound):  # was: the batch list
        client.get("../batches")
    with pytest.raises(JobNotFound):  # was: GET / (the client resolved the dots)
        client.get("..")
    with pytest.raises(NotFound):  # was: the batch canceled
        client.cancel(f"../batches/{made['id']}")
    assert client.get_batch(made["id"])["status"] != "canceled"
    with pytest.raises(NotFound):
        client.get_batch(f"../jobs/{job['id']}")
    with pytest.raises(JobNotFound):
        client.get(f"{job['id']}?x=1")
    assert client.get(job["id"])["id"] == job["id"]


def test_segment_escapes_separators_and_dot_segments():
    assert segment("job_01abc") == "job_01abc"
    assert segment("../batches") == "..%2Fbatches"
    assert segment("..") == "%2E%2E" and segment(".") == "%2E"
    assert segment("a?b#c%d") == "a%3Fb%23c%25d"


def test_paths_on_the_wire_are_escaped(stub):
    seen = stub([(200, {}, {"id": "x", "status": "succeeded"})])
    client = Client(seen.url)
    client.get("../batches")
    client.cancel("a/b")
    client.get_batch("../jobs")
    client.retry_batch("?")
    assert [path for _, path in seen.requests] == ["/jobs/..%2Fbatches", "/jobs/a%2Fb/cancel",
                                                   "/batches/..%2Fjobs", "/batches/%3F/retry"]


# -- waiting ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", ["completed", "failed", "canceled", "expired"])
def test_wait_batch_ends_on_every_terminal_status(stub, status):
    server = stub([(200, {}, batch("running")), (200, {}, batch(status))])
    seen = []
    done = Client(server.url).wait_batch("batch_1", timeout_s=10, poll_s=0.01, on_progress=seen.append)
    assert done["status"] == status and [b["status"] for b in seen] == ["running", status]


def test_wait_batch_still_times_out_on_a_live_batch(stub):
    server = stub([(200, {}, batch("running"))])
    with pytest.raises(Timeout, match="still running"):
        Client(server.url).wait_batch("batch_1", timeout_s=0.05, poll_s=0.01)

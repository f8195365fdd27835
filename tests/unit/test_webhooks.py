"""Webhooks: Standard Webhooks signing, retries with backoff, the delivery log and replay, the outbox.

Deliveries go to a real HTTP receiver on 127.0.0.1 (allowed with INFERNO_WEBHOOK_ALLOWED_NETWORKS) that checks
every one with the ``standardwebhooks`` library.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from click.testing import CliRunner
from standardwebhooks import Webhook

from inferno_jobs.apikey import KeyRing, new_webhook_secret
from inferno_jobs.delivery import DELIVER_WEBHOOK, Deliverer, DeliveryLog, Outbox, dispatch_outbox, retry_after_s
from inferno_jobs.job import JobStatus
from inferno_jobs.queue import WEBHOOK_QUEUE
from inferno_jobs.webhooks import InvalidSignature, payload, sign_headers, verify

SECRET = new_webhook_secret()
IRIS = {"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}}
RESULT = {"predictions": [0], "probabilities": [[0.9, 0.05, 0.05]]}


class Receiver:
    """A webhook receiver on 127.0.0.1: answers from a script (then 200) and records every request.

    ``secrets``: each delivery must verify with every one of them (standardwebhooks), else it is answered 401.
    """

    def __init__(self, secrets=(SECRET,), script=(), port: int = 0, delay_s: float = 0):
        self.secrets = list(secrets)
        self.script = list(script)
        self.delay_s = delay_s
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = dict(self.headers.items())
                verified = []
                for secret in receiver.secrets:
                    try:
                        verified.append(Webhook(secret).verify(body, headers))
                    except Exception:
                        verified.append(None)
                with receiver.lock:
                    answer = receiver.script.pop(0) if receiver.script else (200, {})
                    receiver.requests.append({"headers": {k.lower(): v for k, v in headers.items()}, "body": body,
                                              "payload": verified[0] if verified else None,
                                              "verified": all(v is not None for v in verified), "path": self.path})
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                status, extra = answer if all(v is not None for v in verified) else (401, {})
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def ids(self) -> list[str]:
        return [r["headers"]["webhook-id"] for r in self.requests]


@pytest.fixture
def receiver():
    started = []

    def start(**kwargs) -> Receiver:
        r = Receiver(**kwargs)
        started.append(r)
        return r
    yield start
    for r in started:
        r.close()


@pytest.fixture
def app(make_app):
    return make_app(webhook_secret=SECRET, webhook_allowed_networks=("127.0.0.0/8",), webhook_retry_base_ms=1,
                    webhook_timeout_s=1, webhook_max_attempts=5)


def svc(app):
    return app.extensions["inferno"]


def deliverer(app, **kwargs) -> Deliverer:
    s = svc(app)
    return Deliverer(s.store, s.keyring, s.settings, **kwargs)


def submit_and_finish(app, url, status=JobStatus.SUCCEEDED, **extra):
    """Submit a job through the API with a webhook, then finish it as a worker would; returns the job id."""
    r = app.test_client().post("/jobs", json={**IRIS, "webhook_url": url, **extra})
    assert r.status_code == 202, r.get_json()
    job_id = r.get_json()["id"]
    store = svc(app).store
    assert store.claim(job_id, "w:1") is not None
    store.finish(job_id, status, result=RESULT if status is JobStatus.SUCCEEDED else None,
                 error=None if status is JobStatus.SUCCEEDED else {"code": "INFERENCE_FAILED", "message": "x"})
    return job_id


def queued_events(app, celery_stub) -> list[dict]:
    """Dispatch the outbox into the recording Celery and return the delivery tasks' events."""
    dispatch_outbox(svc(app).store, celery_stub)
    sent = [t for t in celery_stub.sent if t["name"] == DELIVER_WEBHOOK]
    assert all(t["queue"] == WEBHOOK_QUEUE for t in sent)
    events = [t["args"][0] for t in sent]
    celery_stub.clear()
    return events


def drive(d: Deliverer, event: dict, replay_of=None, max_wait_s: float = 2.0):
    """What the Celery task does: attempt, wait the backoff, attempt again, until delivered or given up."""
    attempt = 1
    while True:
        outcome = d.deliver(event, attempt=attempt, replay_of=replay_of)
        if outcome.retry_in_s is None:
            return outcome
        assert outcome.retry_in_s <= max_wait_s
        time.sleep(outcome.retry_in_s)
        attempt += 1


# -- signing and verifying --------------------------------------------------------------------------------------

def test_signed_headers_verify_with_standardwebhooks_and_with_verify():
    body = payload("job.succeeded", time.time(), {"id": "job_1", "object": "job"})
    headers = sign_headers([SECRET], "msg_1", int(time.time()), body)
    assert headers["webhook-id"] == "msg_1" and headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(body, headers)["data"]["id"] == "job_1"
    parsed = verify(headers, body.encode(), SECRET)
    assert parsed["type"] == "job.succeeded" and parsed["timestamp"].endswith("Z")


@pytest.mark.parametrize("tamper", ["body", "secret", "old", "missing"])
def test_verify_refuses_what_does_not_verify(tamper):
    body = payload("job.failed", time.time(), {"id": "job_1"})
    ts = int(time.time()) - (600 if tamper == "old" else 0)
    headers = sign_headers([SECRET], "msg_1", ts, body)
    secret = new_webhook_secret() if tamper == "secret" else SECRET
    if tamper == "body":
        body = body.replace("job_1", "job_2")
    if tamper == "missing":
        del headers["webhook-signature"]
    with pytest.raises(InvalidSignature):
        verify(headers, body, secret)


# -- delivery -------------------------------------------------------------------------------------------------

def test_a_finished_job_is_delivered_signed_with_its_job_object(app, celery_stub, receiver):
    rx = receiver()
    job_id = submit_and_finish(app, rx.url)
    [event] = queued_events(app, celery_stub)
    assert event["type"] == "job.succeeded" and event["job_id"] == job_id
    assert drive(deliverer(app), event).status == "delivered"
    [got] = rx.requests
    assert got["verified"] and got["headers"]["webhook-id"] == event["id"]
    assert abs(int(got["headers"]["webhook-timestamp"]) - time.time()) < 5
    assert got["payload"]["type"] == "job.succeeded" and got["payload"]["timestamp"].endswith("Z")
    data = got["payload"]["data"]
    assert data["id"] == job_id and data["object"] == "job" and data["status"] == "succeeded"
    assert data["result"] == RESULT


def test_only_the_events_a_job_asked_for_are_sent(app, celery_stub, receiver):
    rx = receiver()
    r = app.test_client().post("/jobs", json={**IRIS, "webhook": {"url": rx.url, "events": ["job.failed"]}})
    store = svc(app).store
    store.claim(r.get_json()["id"], "w:1")
    store.finish(r.get_json()["id"], JobStatus.SUCCEEDED, result=RESULT)
    assert queued_events(app, celery_stub) == []
    job_id = submit_and_finish(app, rx.url, status=JobStatus.FAILED)
    [event] = queued_events(app, celery_stub)
    assert event["type"] == "job.failed" and event["job_id"] == job_id


def test_failing_three_times_then_succeeding_makes_four_attempts_with_one_webhook_id(app, celery_stub, receiver):
    rx = receiver(script=[(500, {}), (503, {}), (429, {}), (200, {})])
    job_id = submit_and_finish(app, rx.url)
    [event] = queued_events(app, celery_stub)
    assert drive(deliverer(app), event).status == "delivered"
    assert len(rx.requests) == 4 and set(rx.ids()) == {event["id"]}
    assert all(r["verified"] for r in rx.requests)
    log = DeliveryLog(svc(app).redis, svc(app).store.keys).list(job_id)
    assert [(e["n"], e["attempt"], e["status_code"], e["outcome"]) for e in log] == [
        (1, 1, 500, "retrying"), (2, 2, 503, "retrying"), (3, 3, 429, "retrying"), (4, 4, 200, "delivered")]
    assert all(e["webhook_id"] == event["id"] and e["event"] == "job.succeeded" for e in log)
    assert log[0]["error"] == "HTTP 500" and log[3]["error"] is None and log[0]["next_attempt_at"]


def test_410_gone_stops_retrying(app, celery_stub, receiver):
    rx = receiver(script=[(410, {})] * 3)
    job_id = submit_and_finish(app, rx.url)
    [event] = queued_events(app, celery_stub)
    outcome = deliverer(app).deliver(event)
    assert outcome.status == "failed" and outcome.retry_in_s is None
    assert len(rx.requests) == 1
    [entry] = DeliveryLog(svc(app).redis, svc(app).store.keys).list(job_id)
    assert entry["status_code"] == 410 and entry["outcome"] == "failed"


def test_attempts_stop_at_the_maximum(app, celery_stub, receiver):
    rx = receiver(script=[(500, {})] * 10)
    submit_and_finish(app, rx.url)
    [event] = queued_events(app, celery_stub)
    assert drive(deliverer(app), event).status == "failed"
    assert len(rx.requests) == svc(app).settings.webhook_max_attempts == 5


def test_redirects_are_not_followed(app, celery_stub, receiver):
    rx = receiver(script=[(302, {"Location": "/elsewhere"})])
    job_id = submit_and_finish(app, rx.url)
    [event] = queued_events(app, celery_stub)
    outcome = deliverer(app).deliver(event)
    assert outcome.status == "retrying"
    assert [r["path"] for r in rx.requests] == ["/hook"]
    [entry] = DeliveryLog(svc(app).redis, svc(app).store.keys).list(job_id)
    assert entry["status_code"] == 302 and "not followed" in entry["error"]


def test_a_slow_receiver_times_out_and_is_retried(app, celery_stub, receiver):
    rx = receiver(delay_s=1.6)
    job_id = submit_and_finish(app, rx.url)
    [event] = queued_events(app, celery_stub)
    outcome = deliverer(app).deliver(event)
    assert outcome.status == "retrying"
    [entry] = DeliveryLog(svc(app).redis, svc(app).store.keys).list(job_id)
    assert entry["status_code"] is None and "timed out" in entry["error"] and entry["duration_ms"] >= 900


def test_a_receiver_that_drips_its_answer_times_out_after_the_timeout_in_all(app, celery_stub):
    """requests' timeout bounds each read: a byte of the status line every 0.3 s never trips it. The attempt's
    deadline does (INFERNO_WEBHOOK_TIMEOUT_S is per attempt)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def drip():
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + b"X-Slow: " + b"a" * 40:
                conn.sendall(bytes([byte]))
                time.sleep(0.3)
    threading.Thread(target=drip, daemon=True).start()
    job_id = submit_and_finish(app, f"http://127.0.0.1:{listener.getsockname()[1]}/hook")
    [event] = queued_events(app, celery_stub)
    started = time.monotonic()
    outcome = deliverer(app).deliver(event)
    took = time.monotonic() - started
    listener.close()
    assert outcome.status == "retrying" and took < 3  # the whole answer would take ~20 s
    [entry] = DeliveryLog(svc(app).redis, svc(app).store.keys).list(job_id)
    assert entry["error"] == "timed out after 1 s" and 900 <= entry["duration_ms"] < 3000


def test_retry_after_is_honoured(app, celery_stub, receiver):
    rx = receiver(script=[(503, {"Retry-After": "7"})])
    submit_and_finish(app, rx.url)
    [event] = queued_events(app, celery_stub)
    assert deliverer(app).deliver(event).retry_in_s == 7
    assert 55 <= retry_after_s(formatdate(time.time() + 60, usegmt=True)) <= 60
    assert retry_after_s("garbage") is None and retry_after_s(None) is None


def test_backoff_is_exponential_with_full_jitter_and_capped(make_app):
    app = make_app(webhook_retry_base_ms=1000, webhook_retry_cap_s=30)
    top = deliverer(app, rng=lambda: 1.0)
    assert [top.backoff_s(k) for k in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert deliverer(app, rng=lambda: 0.0).backoff_s(5) == 0
    assert top.backoff_s(1, retry_after=3600) == 30  # a receiver cannot push retries past the cap


def test_a_receiver_that_is_down_and_comes_back_gets_every_event(app, celery_stub, receiver):
    down = receiver()
    port, url = down.port, down.url
    down.close()  # nothing listens on the port now
    job_ids = [submit_and_finish(app, url) for _ in range(3)]
    events = queued_events(app, celery_stub)
    d = deliverer(app)
    first = [d.deliver(e, attempt=1) for e in events]
    assert [o.status for o in first] == ["retrying"] * 3
    assert all("ConnectionError" in o.entry["error"] for o in first)
    back = receiver(port=port)
    assert [d.deliver(e, attempt=2).status for e in events] == ["delivered"] * 3
    assert sorted(back.ids()) == sorted(e["id"] for e in events)
    assert {r["payload"]["data"]["id"] for r in back.requests} == set(job_ids)


def test_rotation_sends_both_signatures_and_both_verify(make_app, celery_stub, receiver):
    app = make_app(auth="required", webhook_allowed_networks=("127.0.0.0/8",))
    keyring: KeyRing = svc(app).keyring
    key, record, old = keyring.create("k")
    new = keyring.rotate_webhook_secret(record.tenant, grace_s=60)
    assert new != old and keyring.webhook_secrets(record.tenant) == [new, old]
    rx = receiver(secrets=[old, new])
    r = app.test_client().post("/jobs", json={**IRIS, "webhook_url": rx.url}, headers={"X-API-Key": key})
    store = svc(app).store
    store.claim(r.get_json()["id"], "w:1")
    store.finish(r.get_json()["id"], JobStatus.SUCCEEDED, result=RESULT)
    [event] = queued_events(app, celery_stub)
    assert deliverer(app).deliver(event).status == "delivered"
    [got] = rx.requests
    assert got["verified"] and len(got["headers"]["webhook-signature"].split(" ")) == 2
    # After the grace period only the new secret signs.
    keyring.rotate_webhook_secret(record.tenant, grace_s=0)
    assert len(keyring.webhook_secrets(record.tenant)) == 1


def test_rotate_secret_command(make_app, monkeypatch):
    import inferno_jobs.cli as cli

    app = make_app(auth="required")
    keyring = svc(app).keyring
    _, record, old = keyring.create("k")
    monkeypatch.setattr(cli, "_keyring", lambda: keyring)
    result = CliRunner().invoke(cli.main, ["keys", "rotate-secret", "--tenant", record.tenant, "--grace-s", "120"])
    assert result.exit_code == 0, result.output
    new = result.output.split()[2]
    assert new.startswith("whsec_") and keyring.webhook_secrets(record.tenant) == [new, old]
    missing = CliRunner().invoke(cli.main, ["keys", "rotate-secret", "--tenant", "tenant_nope"])
    assert missing.exit_code != 0 and "not found" in missing.output


def test_keys_create_notes_a_tenant_that_no_key_had(make_app, monkeypatch):
    import inferno_jobs.cli as cli

    keyring = svc(make_app(auth="required")).keyring
    _, record, _ = keyring.create("k")
    monkeypatch.setattr(cli, "_keyring", lambda: keyring)
    same = CliRunner().invoke(cli.main, ["keys", "create", "--name", "b", "--tenant", record.tenant, "--json"])
    assert same.exit_code == 0 and same.stderr == "" and json.loads(same.stdout)["tenant"] == record.tenant
    typo = CliRunner().invoke(cli.main, ["keys", "create", "--name", "c", "--tenant", record.tenant + "x", "--json"])
    assert typo.exit_code == 0 and json.loads(typo.stdout)["tenant"] == record.tenant + "x"  # the seeds' --user
    assert "new tenant" in typo.stderr


def test_the_job_never_depends_on_its_webhook(app, celery_stub, receiver):
    rx = receiver(script=[(500, {})] * 10)
    job_id = submit_and_finish(app, rx.url)
    celery_stub.fail = True  # the broker is down when the worker hands the event over
    with pytest.raises(ConnectionError):
        dispatch_outbox(svc(app).store, celery_stub)
    assert Outbox(svc(app).redis, svc(app).store.keys).pending() == 1  # kept for the next dispatch
    celery_stub.fail = False
    [event] = queued_events(app, celery_stub)
    assert drive(deliverer(app), event).status == "failed"
    job = app.test_client().get(f"/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded" and job["result"] == RESULT and job["error"] is None


def test_no_secret_is_a_failed_attempt_not_an_unsigned_delivery(make_app, celery_stub, receiver):
    app = make_app(webhook_secret="", webhook_allowed_networks=("127.0.0.0/8",))
    rx = receiver()
    job_id = submit_and_finish(app, rx.url)
    [event] = queued_events(app, celery_stub)
    assert deliverer(app).deliver(event).status == "failed"
    assert rx.requests == []
    [entry] = DeliveryLog(svc(app).redis, svc(app).store.keys).list(job_id)
    assert "INFERNO_WEBHOOK_SECRET" in entry["error"]


# -- the outbox ------------------------------------------------------------------------------------------------

def test_cancel_hands_the_canceled_event_over_at_once(app, celery_stub, receiver):
    rx = receiver()
    client = app.test_client()
    job_id = client.post("/jobs", json={**IRIS, "webhook_url": rx.url}).get_json()["id"]
    celery_stub.clear()
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    [task] = [t for t in celery_stub.sent if t["name"] == DELIVER_WEBHOOK]
    assert task["args"][0]["type"] == "job.canceled" and task["queue"] == WEBHOOK_QUEUE
    assert Outbox(svc(app).redis, svc(app).store.keys).pending() == 0


def test_an_event_claimed_by_a_dispatcher_that_died_is_sent_later(app, celery_stub, receiver):
    submit_and_finish(app, "http://127.0.0.1:9/hook")
    s = svc(app)
    outbox = Outbox(s.redis, s.store.keys, claim_timeout_s=60)
    # A dispatcher claims the event and dies before sending it.
    s.redis.eval("local r = redis.call('RPOP', KEYS[1]); redis.call('ZADD', KEYS[2], ARGV[1], r); return r", 2,
                 s.store.keys.outbox(), s.store.keys.outbox_claimed(), time.time())
    assert outbox.pending() == 1 and outbox.dispatch(lambda e: None) == 0  # not stale yet: not sent twice
    assert outbox.restore_stale(at=time.time() + 61) == 1
    sent = []
    assert outbox.dispatch(sent.append) == 1 and sent[0]["type"] == "job.succeeded"
    assert outbox.pending() == 0


def test_the_reconciler_tick_dispatches_the_outbox(app, celery_stub):
    from workers.reconciler import Reconciler

    submit_and_finish(app, "http://127.0.0.1:9/hook")
    s = svc(app)
    Reconciler(s.store, lambda job: None, hostname="h", pool="cpu", queues=[], celery=celery_stub).tick()
    assert [t["name"] for t in celery_stub.sent if t["name"] == DELIVER_WEBHOOK] == [DELIVER_WEBHOOK]


# -- the delivery log and replay -------------------------------------------------------------------------------

def test_deliveries_endpoint_and_replay(app, celery_stub, receiver):
    rx = receiver(script=[(500, {}), (200, {})])
    job_id = submit_and_finish(app, rx.url)
    [event] = queued_events(app, celery_stub)
    d = deliverer(app)
    drive(d, event)
    client = app.test_client()
    body = client.get(f"/jobs/{job_id}/deliveries").get_json()
    assert body["object"] == "list" and body["job_id"] == job_id
    assert [(e["n"], e["attempt"], e["status_code"], e["outcome"]) for e in body["data"]] == [
        (1, 1, 500, "retrying"), (2, 2, 200, "delivered")]
    first = body["data"][0]
    assert first["webhook_id"] == event["id"] and first["event"] == "job.succeeded" and first["url"] == rx.url
    assert first["attempted_at"].endswith("Z") and first["duration_ms"] >= 0 and first["error"] == "HTTP 500"

    r = client.post(f"/jobs/{job_id}/deliveries/1/replay")
    assert r.status_code == 202
    assert r.get_json()["webhook_id"] == event["id"] and r.get_json()["replay_of"] == 1
    [task] = celery_stub.sent
    assert task["name"] == DELIVER_WEBHOOK and task["queue"] == WEBHOOK_QUEUE and task["kwargs"] == {"replay_of": 1}
    assert d.deliver(task["args"][0], **task["kwargs"]).status == "delivered"
    assert rx.ids() == [event["id"]] * 3 and all(r["verified"] for r in rx.requests)
    assert rx.requests[2]["payload"]["timestamp"] == rx.requests[0]["payload"]["timestamp"]
    replayed = client.get(f"/jobs/{job_id}/deliveries").get_json()["data"][2]
    assert replayed["n"] == 3 and replayed["replay_of"] == 1 and replayed["webhook_id"] == event["id"]

    assert client.post(f"/jobs/{job_id}/deliveries/9/replay").status_code == 404
    assert client.get("/jobs/job_nope/deliveries").get_json()["error"]["code"] == "JOB_NOT_FOUND"


def replay(app, celery_stub, path: str) -> dict:
    """POST a replay and return the delivery task it queued (what the webhooks worker would run)."""
    celery_stub.clear()
    r = app.test_client().post(path)
    assert r.status_code == 202, r.get_json()
    [task] = [t for t in celery_stub.sent if t["name"] == DELIVER_WEBHOOK]
    return task


def test_retries_and_replays_send_the_event_as_it_happened_after_the_job_ran_again(app, celery_stub, receiver):
    rx = receiver(script=[(500, {})])
    job_id = submit_and_finish(app, rx.url, status=JobStatus.FAILED)
    [event] = queued_events(app, celery_stub)
    d = deliverer(app)
    assert d.deliver(event, attempt=1).status == "retrying"
    store = svc(app).store
    store.retry(job_id)  # the job runs again, and fails again, before the event's second attempt
    assert store.claim(job_id, "w:2") is not None
    store.finish(job_id, JobStatus.FAILED, error={"code": "INFERENCE_FAILED", "message": "again"})
    assert d.deliver(event, attempt=2).status == "delivered"
    task = replay(app, celery_stub, f"/jobs/{job_id}/deliveries/1/replay")
    assert d.deliver(task["args"][0], **task["kwargs"]).status == "delivered"

    first, retried, replayed = rx.requests
    assert retried["body"] == first["body"] and replayed["body"] == first["body"]
    assert set(rx.ids()) == {event["id"]} and all(r["verified"] for r in rx.requests)
    data = first["payload"]["data"]
    assert data["status"] == "failed" and data["attempts"] == 1 and data["error"]["message"] == "x"
    # The second run's failure is an event of its own, with the job as it is now.
    celery_stub.clear()
    [second] = queued_events(app, celery_stub)
    assert second["id"] != event["id"] and d.deliver(second).status == "delivered"
    assert rx.requests[3]["payload"]["data"]["attempts"] == 2
    assert rx.requests[3]["payload"]["data"]["error"]["message"] == "again"


def test_an_event_written_without_its_body_is_sent_as_the_job_is_then_kept(app, celery_stub, receiver):
    # An event an older version wrote to the outbox carries no body: the first attempt takes the job as it is, and
    # every later attempt and replay sends those same bytes.
    rx = receiver(script=[(500, {})])
    job_id = submit_and_finish(app, rx.url, status=JobStatus.FAILED)
    s = svc(app)
    s.redis.delete(s.store.keys.webhook_bodies(job_id))
    [event] = queued_events(app, celery_stub)
    d = deliverer(app)
    assert d.deliver(event, attempt=1).status == "retrying"
    s.store.retry(job_id)
    assert d.deliver(event, attempt=2).status == "delivered"
    task = replay(app, celery_stub, f"/jobs/{job_id}/deliveries/2/replay")
    assert d.deliver(task["args"][0], **task["kwargs"]).status == "delivered"
    assert len({r["body"] for r in rx.requests}) == 1 and len(rx.requests) == 3
    assert rx.requests[0]["payload"]["data"]["status"] == "failed"


def test_a_batch_event_keeps_the_counts_of_its_moment_and_replays_like_a_jobs(app, celery_stub, receiver):
    from inferno_jobs.batchstore import BatchStore
    from tests.unit.test_api_batches import rows, upload

    rx = receiver(script=[(500, {})])
    client = app.test_client()
    batch = upload(client, rows(70), model="iris", webhook_url=rx.url).get_json()  # chunks of 64 and 6
    batches = BatchStore(svc(app).redis, svc(app).settings)
    assert batches.start_chunk(batch["id"], 0)
    assert client.post(f"/batches/{batch['id']}/cancel").get_json()["status"] == "canceled"
    [event] = queued_events(app, celery_stub)
    # The chunk that was running when the batch was canceled still stores its results: the counts move on.
    ran = [(item, {"predictions": [0]}, None) for item, _ in batches.chunk(batch["id"], 0)]
    assert batches.finish_chunk(batch["id"], 0, ran) == 1
    assert client.get(f"/batches/{batch['id']}").get_json()["request_counts"]["completed"] == 64
    d = deliverer(app)
    assert [d.deliver(event, attempt=k).status for k in (1, 2)] == ["retrying", "delivered"]

    log = client.get(f"/batches/{batch['id']}/deliveries").get_json()
    assert log["batch_id"] == batch["id"] and "job_id" not in log
    assert [(e["n"], e["outcome"]) for e in log["data"]] == [(1, "retrying"), (2, "delivered")]
    task = replay(app, celery_stub, f"/batches/{batch['id']}/deliveries/1/replay")
    assert task["args"][0] == {"id": event["id"], "type": "batch.canceled", "batch_id": batch["id"],
                               "timestamp": event["timestamp"]}
    assert d.deliver(task["args"][0], **task["kwargs"]).status == "delivered"
    assert len({r["body"] for r in rx.requests}) == 1 and set(rx.ids()) == {event["id"]}
    data = rx.requests[0]["payload"]["data"]
    assert data["status"] == "canceled" and data["request_counts"]["completed"] == 0
    assert client.get(f"/batches/{batch['id']}/deliveries").get_json()["data"][2]["replay_of"] == 1
    assert client.post(f"/batches/{batch['id']}/deliveries/9/replay").status_code == 404
    assert client.post("/batches/batch_nope/deliveries/1/replay").status_code == 404


def test_deliveries_are_tenant_scoped(make_app, celery_stub):
    app = make_app(auth="required")
    keyring = svc(app).keyring
    key_a, _, _ = keyring.create("a")
    key_b, _, _ = keyring.create("b")
    client = app.test_client()
    job_id = client.post("/jobs", json=IRIS, headers={"X-API-Key": key_a}).get_json()["id"]
    assert client.get(f"/jobs/{job_id}/deliveries", headers={"X-API-Key": key_a}).status_code == 200
    for r in (client.get(f"/jobs/{job_id}/deliveries", headers={"X-API-Key": key_b}),
              client.post(f"/jobs/{job_id}/deliveries/1/replay", headers={"X-API-Key": key_b})):
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "JOB_NOT_FOUND"
    assert client.get(f"/jobs/{job_id}/deliveries").status_code == 401


def test_the_delivery_log_expires_with_the_job_retention(app, celery_stub, receiver):
    rx = receiver()
    job_id = submit_and_finish(app, rx.url)
    [event] = queued_events(app, celery_stub)
    deliverer(app).deliver(event)
    for key in (svc(app).store.keys.deliveries(job_id), svc(app).store.keys.webhook_bodies(job_id)):
        assert 0 < svc(app).redis.ttl(key) <= svc(app).settings.result_retention_s


def test_openapi_lists_the_delivery_routes(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    assert "get" in paths["/jobs/{job_id}/deliveries"]
    assert "post" in paths["/jobs/{job_id}/deliveries/{n}/replay"]
    assert "post" in paths["/batches/{batch_id}/deliveries/{n}/replay"]


# -- the local listener ----------------------------------------------------------------------------------------

def test_webhooks_listen_verifies_and_prints_events():
    from inferno_jobs.listener import make_server

    printed, errors = [], []
    server = make_server(0, SECRET, out=printed.append, err=errors.append)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        body = payload("job.succeeded", time.time(), {"id": "job_1", "status": "succeeded"})
        good = requests.post(url, data=body, headers=sign_headers([SECRET], "msg_1", int(time.time()), body))
        assert good.status_code == 204
        line = json.loads(printed[0])
        assert line["webhook_id"] == "msg_1" and line["type"] == "job.succeeded" and line["id"] == "job_1"
        bad = requests.post(url, data=body, headers=sign_headers([new_webhook_secret()], "msg_2",
                                                                 int(time.time()), body))
        assert bad.status_code == 401 and len(printed) == 1 and "msg_2" in errors[0]
    finally:
        server.shutdown()
        server.server_close()

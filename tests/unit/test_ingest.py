"""Inbound signed webhooks (POST /webhooks/ingest/<source>) on fakeredis, with Celery replaced by a recorder."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner
from standardwebhooks import Webhook

from inferno_jobs.apikey import KeyRing
from inferno_jobs.ingest import SourceRegistry

IRIS = {"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}}


def iris(n: int) -> dict:
    """A distinct iris request: identical ones may share one run (the result cache), this test counts messages."""
    return {**IRIS, "input": {"features": [[5.1, 3.5, 1.4, round(0.2 + n / 10, 1)]]}}


def signed(secret: str, body, *, msg_id: str | None = None, at: float | None = None) -> tuple[str, dict]:
    """The body as sent and its Standard Webhooks headers, signed by the sender's library."""
    raw = body if isinstance(body, str) else json.dumps(body)
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    stamp = datetime.fromtimestamp(int(at if at is not None else time.time()), tz=timezone.utc)
    return raw, {"webhook-id": msg_id, "webhook-timestamp": str(int(stamp.timestamp())),
                 "webhook-signature": Webhook(secret).sign(msg_id, stamp, raw), "content-type": "application/json"}


def post(client, source: str, raw: str, headers: dict):
    return client.post(f"/webhooks/ingest/{source}", data=raw, headers=headers)


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def registry(app, fake_redis):
    return SourceRegistry(fake_redis, app.extensions["inferno"].settings)


@pytest.fixture
def source(registry):
    return registry.create("crm", "local")


def ingest_metric(client) -> dict:
    """``inferno_ingest_webhooks_total`` from GET /metrics: (source, outcome, reason) -> count."""
    out = {}
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith("inferno_ingest_webhooks_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            out[(labels["source"], labels["outcome"], labels["reason"])] = float(line.rsplit(" ", 1)[1])
    return out


def test_a_signed_event_becomes_a_job_of_the_sources_tenant(make_app, fake_redis, celery_stub):
    app = make_app(auth="required")
    settings = app.extensions["inferno"].settings
    keyring = KeyRing(fake_redis, settings)
    key, record, _ = keyring.create("owner")
    other_key, _, _ = keyring.create("someone else")
    source = SourceRegistry(fake_redis, settings).create("crm", record.tenant, {"priority": "high"})
    client = app.test_client()

    raw, headers = signed(source.secret, {"type": "job.create", "data": {**IRIS, "metadata": {"order": "o-1"}}})
    r = post(client, "crm", raw, headers)

    assert r.status_code == 202, r.get_json()
    body = r.get_json()
    job = body["job"]
    assert body["webhook_id"] == headers["webhook-id"] and body["source"] == "crm"
    assert job["status"] == "queued" and job["model"] == "iris" and job["priority"] == "high"
    assert job["metadata"] == {"order": "o-1", "ingest_source": "crm", "ingest_webhook_id": headers["webhook-id"]}
    assert r.headers["Location"] == f"/jobs/{job['id']}"
    [sent] = celery_stub.sent
    assert sent["name"] == "inferno.run_job" and sent["args"] == [job["id"]] and sent["queue"] == "inferno.cpu.high"
    # The job is the source's tenant's: its key reads it, another tenant's key gets 404.
    assert client.get(f"/jobs/{job['id']}", headers={"X-API-Key": key}).get_json()["id"] == job["id"]
    assert client.get(f"/jobs/{job['id']}", headers={"X-API-Key": other_key}).status_code == 404


def test_a_bare_job_request_with_the_source_defaults_filled_in(registry, client, celery_stub):
    source = registry.create("sensors", "local", {"model": "iris", "type": "predict", "priority": "low"})
    raw, headers = signed(source.secret, {"input": {"features": [[6.7, 3.0, 5.2, 2.3]]}})
    r = client.post("/webhooks/ingest?source=sensors", data=raw, headers=headers)
    assert r.status_code == 202, r.get_json()
    job = r.get_json()["job"]
    assert (job["type"], job["model"], job["priority"]) == ("predict", "iris", "low")
    assert client.get(f"/jobs/{job['id']}").get_json()["status"] == "queued"
    assert len(celery_stub.sent) == 1


@pytest.mark.parametrize("case", ["forged signature", "wrong secret", "tampered body", "stale timestamp",
                                  "future timestamp", "no signature", "unknown source", "revoked source"])
def test_an_event_that_does_not_verify_is_refused_and_makes_no_job(case, source, registry, client, celery_stub):
    from inferno_jobs.apikey import new_webhook_secret

    name = "crm"
    secret = new_webhook_secret() if case == "wrong secret" else source.secret
    at = {"stale timestamp": time.time() - 301, "future timestamp": time.time() + 301}.get(case)
    raw, headers = signed(secret, IRIS, at=at)
    if case == "forged signature":
        headers["webhook-signature"] = "v1," + "A" * 43 + "="
    elif case == "tampered body":
        raw = raw.replace("5.1", "9.9")
    elif case == "no signature":
        del headers["webhook-signature"]
    elif case == "unknown source":
        name = "nobody"
    elif case == "revoked source":
        registry.revoke("crm")

    r = post(client, name, raw, headers)

    assert r.status_code == 401
    error = r.get_json()["error"]
    assert error["code"] == "AUTHENTICATION_FAILED" and error["details"] is None
    assert error["message"] == "webhook refused: it does not verify for this source"  # the same for every case
    assert celery_stub.sent == [] and client.get("/jobs").get_json()["data"] == []


def test_a_replayed_webhook_id_is_refused_with_the_first_job_and_makes_no_second_job(source, client, celery_stub):
    raw, headers = signed(source.secret, IRIS)
    first = post(client, "crm", raw, headers)
    assert first.status_code == 202
    job_id = first.get_json()["job"]["id"]

    replay = post(client, "crm", raw, headers)
    # A retry of the same message with a fresh timestamp (what senders do) is the same message: refused too.
    _, retry_headers = signed(source.secret, raw, msg_id=headers["webhook-id"], at=time.time() + 5)
    retry = post(client, "crm", raw, retry_headers)

    for r in (replay, retry):
        assert r.status_code == 409
        error = r.get_json()["error"]
        assert error["code"] == "CONFLICT"
        assert error["details"] == {"webhook_id": headers["webhook-id"], "job_id": job_id}
    assert len(celery_stub.sent) == 1 and len(client.get("/jobs").get_json()["data"]) == 1
    counts = ingest_metric(client)
    assert counts[("crm", "accepted", "")] == 1
    assert counts[("crm", "refused", "replay")] == 2


def test_a_rotated_secret_and_the_previous_one_both_verify_during_the_grace(source, registry, client, celery_stub):
    old_secret = source.secret
    new_secret = registry.rotate_secret("crm", grace_s=3600).secret
    assert new_secret != old_secret
    for n, secret in enumerate((old_secret, new_secret)):
        raw, headers = signed(secret, iris(n))
        assert post(client, "crm", raw, headers).status_code == 202

    registry.rotate_secret("crm", grace_s=0)  # no grace: only the newest secret verifies
    newest = registry.get("crm").secret
    raw, headers = signed(new_secret, iris(3))
    assert post(client, "crm", raw, headers).status_code == 401
    raw, headers = signed(newest, iris(4))
    assert post(client, "crm", raw, headers).status_code == 202
    assert len(celery_stub.sent) == 3


@pytest.mark.parametrize("event, field", [
    ({"type": "job.create", "data": {**IRIS, "priority": "urgent"}}, "priority"),
    ({"type": "job.create", "data": {"type": "predict", "input": {"features": [[1, 2, 3, 4]]}}}, "model"),
    ({**IRIS, "surprise": 1}, "surprise"),
    ({"type": "job.delete", "data": IRIS}, "type"),
    ({"data": "nope"}, "data"),
])
def test_a_bad_payload_is_a_400_with_details_and_its_webhook_id_stays_usable(event, field, source, client,
                                                                              celery_stub):
    raw, headers = signed(source.secret, event)
    r = post(client, "crm", raw, headers)
    assert r.status_code == 400
    error = r.get_json()["error"]
    assert error["code"] == "INVALID_REQUEST" and field in error["details"]
    assert celery_stub.sent == []
    # The sender fixes the payload and sends the message again under the same webhook-id: it is not a replay.
    raw, headers = signed(source.secret, IRIS, msg_id=headers["webhook-id"])
    assert post(client, "crm", raw, headers).status_code == 202


def test_signed_but_not_json_is_a_400(source, client):
    raw, headers = signed(source.secret, "{not json")
    r = post(client, "crm", raw, headers)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "INVALID_REQUEST"


def test_a_body_over_the_request_limit_is_a_413(make_app, fake_redis):
    app = make_app(max_request_bytes=1024)
    source = SourceRegistry(fake_redis, app.extensions["inferno"].settings).create("crm", "local")
    raw, headers = signed(source.secret, {**IRIS, "metadata": {"pad": "x" * 2000}})
    r = post(app.test_client(), "crm", raw, headers)
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_a_source_is_rate_limited_like_an_api_key_after_it_verifies(make_app, fake_redis, celery_stub):
    app = make_app(auth="required", rate_limit_rpm=2)
    settings = app.extensions["inferno"].settings
    _, record, _ = KeyRing(fake_redis, settings).create("owner")
    source = SourceRegistry(fake_redis, settings).create("crm", record.tenant)
    client = app.test_client()
    forged, headers = signed("whsec_" + "A" * 44, IRIS)
    for _ in range(3):  # forged messages use up nothing
        assert post(client, "crm", forged, headers).status_code == 401
    statuses = [post(client, "crm", *signed(source.secret, iris(n))).status_code for n in range(3)]
    assert statuses == [202, 202, 429]
    assert len(celery_stub.sent) == 2
    counts = ingest_metric(client)
    assert counts[("crm", "refused", "signature")] == 3
    assert counts[("crm", "refused", "rate_limited")] == 1


def test_refusals_are_counted_by_reason_and_unknown_names_share_one_label(source, client):
    post(client, "who-knows", *signed(source.secret, IRIS))
    post(client, "crm", *signed(source.secret, IRIS, at=time.time() - 3600))
    counts = ingest_metric(client)
    assert counts[("(unknown)", "refused", "unknown_source")] == 1
    assert counts[("crm", "refused", "timestamp")] == 1


def test_the_cli_creates_lists_rotates_and_revokes_sources(fake_redis, settings, monkeypatch):
    from inferno_jobs import ingest_cli
    from inferno_jobs.cli import main

    live = settings.__class__.from_env({}, **{**settings.__dict__, "auth": "required"})
    monkeypatch.setattr(ingest_cli, "_registry", lambda: SourceRegistry(fake_redis, live))
    _, record, _ = KeyRing(fake_redis, live).create("owner")
    runner = CliRunner()

    created = runner.invoke(main, ["ingest-sources", "create", "--name", "crm", "--key-tenant-of", record.id,
                                   "--model", "iris", "--type", "predict", "--json"])
    assert created.exit_code == 0, created.output
    out = json.loads(created.output)
    assert out["tenant"] == record.tenant and out["secret"].startswith("whsec_")
    assert out["url_path"] == "/webhooks/ingest/crm" and out["defaults"] == {"model": "iris", "type": "predict"}

    again = runner.invoke(main, ["ingest-sources", "create", "--name", "crm", "--tenant", "t"])
    assert again.exit_code == 1 and "CONFLICT" in again.output
    no_tenant = runner.invoke(main, ["ingest-sources", "create", "--name", "x"])
    assert no_tenant.exit_code == 2 and "--tenant" in no_tenant.output  # usage errors exit 2, as the README says
    bad_name = runner.invoke(main, ["ingest-sources", "create", "--name", "bad name!", "--tenant", "t"])
    assert bad_name.exit_code == 2 and "a source name is 1 to 64" in bad_name.output

    rotated = runner.invoke(main, ["ingest-sources", "rotate-secret", "crm", "--grace-s", "60"])
    assert rotated.exit_code == 0 and out["secret"] not in rotated.output
    listed = runner.invoke(main, ["ingest-sources", "list"])
    assert f"crm  {record.tenant}  rotating  model=iris type=predict" in listed.output
    assert "whsec_" not in listed.output
    assert runner.invoke(main, ["ingest-sources", "revoke", "crm"]).exit_code == 0
    assert "revoked" in runner.invoke(main, ["ingest-sources", "list"]).output

"""The native jobs API on fakeredis, with Celery replaced by a recorder."""

import json
import time
import subprocess
import sys

import pytest
import redis

from inferno_jobs.apikey import KeyRing

IRIS = {"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}}


def test_submit_returns_202_queued_job_and_enqueues_by_name(client, celery_stub):
    r = client.post("/jobs", json={**IRIS, "priority": "high", "metadata": {"user": "u1"}, "timeout_s": 30})
    assert r.status_code == 202
    job = r.get_json()
    assert job["status"] == "queued" and job["object"] == "job" and job["priority"] == "high"
    assert job["queue_position"] == 0 and job["attempts"] == 0 and job["metadata"] == {"user": "u1"}
    assert r.headers["Location"] == f"/jobs/{job['id']}"
    [sent] = celery_stub.sent
    assert sent["name"] == "inferno.run_job" and sent["args"] == [job["id"]]
    assert sent["queue"] == "inferno.cpu.high" and sent["soft_time_limit"] == 30
    assert client.get(f"/jobs/{job['id']}").get_json()["id"] == job["id"]


def test_a_submission_answers_with_its_place_behind_higher_priorities_and_earlier_jobs(client):
    def position(priority):
        r = client.post("/jobs", json={**IRIS, "priority": priority})
        assert r.status_code == 202
        return r.get_json()["id"], r.get_json()["queue_position"]

    lows = [position("low") for _ in range(3)]
    normal_id, normal_at = position("normal")
    high_id, high_at = position("high")
    assert [at for _, at in lows] == [0, 1, 2] and normal_at == 0 and high_at == 0
    # Read again, live: the later high and normal jobs now run before the lows.
    assert [client.get(f"/jobs/{i}").get_json()["queue_position"] for i, _ in lows] == [2, 3, 4]
    assert client.get(f"/jobs/{normal_id}").get_json()["queue_position"] == 1


def test_a_listed_page_shows_each_queued_jobs_live_position(client):
    ids = [client.post("/jobs", json={**IRIS, "priority": p}).get_json()["id"] for p in ("low", "low", "high")]
    client.post(f"/jobs/{ids[1]}/cancel")
    page = {j["id"]: j["queue_position"] for j in client.get("/jobs").get_json()["data"]}
    assert page == {ids[0]: 1, ids[1]: None, ids[2]: 0}  # the high one first; a canceled job has none
    assert page[ids[0]] == client.get(f"/jobs/{ids[0]}").get_json()["queue_position"]


def test_every_response_carries_a_request_id(client):
    assert client.get("/health").headers["X-Request-ID"].startswith("req_")
    r = client.get("/jobs/job_nope", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123" and r.get_json()["request_id"] == "abc-123"


@pytest.mark.parametrize("body, status, code, field", [
    ({"model": "iris", "input": {"features": [[1, 2, 3, 4]]}}, 400, "INVALID_REQUEST", "type"),
    ({"type": "predict", "input": {"features": [[1, 2, 3, 4]]}}, 400, "INVALID_REQUEST", "model"),
    ({"type": "predict", "model": "iris"}, 400, "INVALID_REQUEST", "input"),
    ({**IRIS, "priority": "urgent"}, 400, "INVALID_REQUEST", "priority"),
    ({**IRIS, "type": "translate"}, 400, "INVALID_REQUEST", "type"),
    ({**IRIS, "input": {"features": "nope"}}, 400, "INVALID_REQUEST", "input"),
    ({**IRIS, "input": {"features": [[1, 2], [1]]}}, 400, "INVALID_REQUEST", "input"),
    ({**IRIS, "input": {"features": [["a", "b", "c", "d"]]}}, 400, "INVALID_REQUEST", "input"),
    ({**IRIS, "input": {"features": [[1, 2, 3]]}}, 400, "INVALID_REQUEST", None),
    ({**IRIS, "ttl_s": "soon"}, 400, "INVALID_REQUEST", "ttl_s"),
    ({**IRIS, "ttl_s": 0}, 400, "INVALID_REQUEST", "ttl_s"),
    ({**IRIS, "ttl_s": 604801}, 400, "INVALID_REQUEST", "ttl_s"),  # INFERNO_MAX_TTL_S: refused, not clamped
    ({**IRIS, "timeout_s": 86401}, 400, "INVALID_REQUEST", "timeout_s"),
    ({**IRIS, "surprise": 1}, 400, "INVALID_REQUEST", "surprise"),
    ({**IRIS, "webhook_url": "ftp://x"}, 400, "INVALID_REQUEST", "webhook_url"),
    ({**IRIS, "model": "nope"}, 404, "MODEL_NOT_FOUND", None),
    ({**IRIS, "model": "../../etc"}, 404, "MODEL_NOT_FOUND", None),
    ({**IRIS, "type": "embedding", "input": {"input": "hi"}}, 400, "INVALID_REQUEST", None),
    ({"type": "completion", "model": "iris", "input": {"prompt": "x", "temperature": 3}}, 400, "INVALID_REQUEST",
     "input"),
    ({"type": "completion", "model": "iris", "input": {"prompt": "x", "top_p": 1.5}}, 400, "INVALID_REQUEST",
     "input"),
    ({"type": "completion", "model": "iris", "input": {"prompt": "x", "max_tokens": 0}}, 400, "INVALID_REQUEST",
     "input"),
    ({"type": "embedding", "model": "iris", "input": {"input": ""}}, 400, "INVALID_REQUEST", "input"),
    ({"type": "embedding", "model": "iris", "input": {"input": "x" * 8001}}, 400, "INVALID_REQUEST", "input"),
    ({"type": "chat", "model": "iris", "input": {"messages": []}}, 400, "INVALID_REQUEST", "input"),
    # refused at submit, as on /v1, not failed by the worker after a 202
    ({"type": "completion", "model": "iris", "input": {"prompt": "x", "seed": -1}}, 400, "INVALID_REQUEST", "input"),
    ({"type": "completion", "model": "iris", "input": {"prompt": "x", "stream": "yes"}}, 400, "INVALID_REQUEST",
     "input"),
    ({"type": "chat", "model": "iris", "input": {"messages": [{"role": "tool", "content": "x"}]}}, 400,
     "INVALID_REQUEST", "input"),
])
def test_bad_submissions_get_the_contract_error(client, celery_stub, body, status, code, field):
    r = client.post("/jobs", json=body)
    assert r.status_code == status, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == code and error["message"]
    if field:
        assert field in error["details"]
    assert celery_stub.sent == []


@pytest.mark.parametrize("data, content_type", [
    ("{not json", "application/json"), ("", "application/json"), ("[1, 2]", "application/json"),
    ("\xff\xfe", "application/json"), ("null", "application/json"), ("42", "text/plain"),
    # valid JSON that no record can hold (inferno_jobs/codec.py): a lone surrogate, deep nesting, a huge integer
    ('{"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}, '
     '"metadata": {"x": "\\ud800"}}', "application/json"),
    ('{"type": "embedding", "model": "minilm", "input": {"input": "a \\udc00 b"}}', "application/json"),
    ('{"metadata": ' + "[" * 5000 + "]" * 5000 + "}", "application/json"),
    ('{"metadata": ' + "[" * 100 + "]" * 100 + "}", "application/json"),
    ('{"metadata": {"n": -9223372036854775809}}', "application/json"),
])
def test_malformed_bodies_are_400_never_500(client, data, content_type):
    r = client.post("/jobs", data=data, content_type=content_type)
    assert r.status_code == 400
    body = r.get_json()
    assert body["error"]["code"] == "INVALID_REQUEST" and body["request_id"] and body["timestamp"].endswith("Z")


def test_an_integer_no_record_can_hold_is_400_naming_it_and_nothing_is_kept(client, celery_stub):
    body = '{"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}, ' \
           '"metadata": {"n": 123456789012345678901234567890}}'
    r = client.post("/jobs", data=body, content_type="application/json")
    assert r.status_code == 400
    error = r.get_json()["error"]
    assert error["code"] == "INVALID_REQUEST" and "12345678901234567890... (30 digits)" in error["message"]
    assert "64 bits" in error["message"]
    assert celery_stub.sent == [] and client.get("/jobs").get_json()["data"] == []


def test_integers_at_the_64_bit_bounds_are_kept_exactly(client):
    metadata = {"biggest": 2 ** 64 - 1, "smallest": -(2 ** 63), "signed": 2 ** 63 - 1}
    r = client.post("/jobs", json={**IRIS, "metadata": metadata})
    assert r.status_code == 202
    assert client.get(f"/jobs/{r.get_json()['id']}").get_json()["metadata"] == metadata


def test_oversized_body_is_413(make_app):
    client = make_app(max_request_bytes=1000).test_client()
    r = client.post("/jobs", json={**IRIS, "metadata": {"x": "y" * 2000}})
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_unknown_route_and_method(client):
    assert client.get("/nowhere").status_code == 404
    r = client.delete("/jobs")
    assert r.status_code == 405 and r.get_json()["error"]["code"] == "INVALID_REQUEST"


def test_unknown_job_is_404(client):
    r = client.get("/jobs/job_01doesnotexist")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "JOB_NOT_FOUND"
    assert client.post("/jobs/job_01doesnotexist/cancel").status_code == 404


def test_idempotency_key(client, celery_stub):
    headers = {"Idempotency-Key": "order-42"}
    first = client.post("/jobs", json=IRIS, headers=headers)
    again = client.post("/jobs", json=IRIS, headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    other = client.post("/jobs", json={**IRIS, "priority": "low"}, headers=headers)
    assert other.status_code == 409 and other.get_json()["error"]["code"] == "CONFLICT"
    assert len(celery_stub.sent) == 1


def test_cancel_queued_then_409(client):
    job = client.post("/jobs", json=IRIS).get_json()
    r = client.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.get_json()["status"] == "canceled"
    again = client.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "CONFLICT"


def test_list_with_filters_limit_and_cursor(client):
    ids = [client.post("/jobs", json=IRIS).get_json()["id"] for _ in range(5)]
    client.post(f"/jobs/{ids[0]}/cancel")
    page = client.get("/jobs?limit=2").get_json()
    assert page["object"] == "list" and [j["id"] for j in page["data"]] == ids[:-3:-1]
    rest = client.get(f"/jobs?limit=10&cursor={page['next_cursor']}").get_json()
    assert [j["id"] for j in rest["data"]] == ids[-3::-1] and rest["next_cursor"] is None
    assert [j["id"] for j in client.get("/jobs?status=canceled").get_json()["data"]] == [ids[0]]
    for bad in ("limit=0", "limit=101", "status=done", "type=x", "limit=abc", "colour=red", "cursor=zzzz",
                f"cursor={ids[0].replace('job_', 'batch_')}", f"cursor={ids[0].upper()}", "cursor="):
        r = client.get(f"/jobs?{bad}")
        assert r.status_code == 400 and r.get_json()["error"]["code"] == "INVALID_REQUEST", bad
    assert "cursor" in client.get("/jobs?cursor=zzzz").get_json()["error"]["details"]
    # An id that names no job is still a place in the list (a job removed since, or another tenant's)
    from inferno_jobs.job import new_id
    assert [j["id"] for j in client.get(f"/jobs?cursor={new_id('job')}").get_json()["data"]] == ids[::-1]


def test_enqueue_failure_is_an_error_and_keeps_nothing(client, celery_stub):
    celery_stub.fail = True
    r = client.post("/jobs", json=IRIS, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 500 and r.get_json()["error"]["code"] == "INTERNAL_ERROR"
    assert r.headers["Retry-After"] == "5"
    assert client.get("/jobs").get_json()["data"] == []
    celery_stub.fail = False
    retry = client.post("/jobs", json=IRIS, headers={"Idempotency-Key": "k1"})
    assert retry.status_code == 202 and len(celery_stub.sent) == 1


def test_auth_required_keys_and_tenants(make_app, fake_redis):
    app = make_app(auth="required")
    client = app.test_client()
    ring = KeyRing(fake_redis, app.extensions["inferno"].settings)
    key_a, rec_a, secret = ring.create("a")
    key_b, _, _ = ring.create("b")
    assert secret.startswith("whsec_")
    assert client.post("/jobs", json=IRIS).status_code == 401
    assert client.get("/jobs", headers={"Authorization": "Bearer nope"}).get_json()["error"]["code"] \
        == "AUTHENTICATION_FAILED"
    job = client.post("/jobs", json=IRIS, headers={"Authorization": f"Bearer {key_a}"}).get_json()
    assert client.get(f"/jobs/{job['id']}", headers={"X-API-Key": key_a}).status_code == 200
    foreign = client.get(f"/jobs/{job['id']}", headers={"X-API-Key": key_b})
    assert foreign.status_code == 404 and foreign.get_json()["error"]["code"] == "JOB_NOT_FOUND"
    assert client.post(f"/jobs/{job['id']}/cancel", headers={"X-API-Key": key_b}).status_code == 404
    assert client.get("/jobs", headers={"X-API-Key": key_b}).get_json()["data"] == []
    ring.revoke(rec_a.id)
    assert client.get(f"/jobs/{job['id']}", headers={"X-API-Key": key_a}).status_code == 401
    assert client.get("/health").status_code == 200  # health needs no key


def test_keys_store_only_a_hash(fake_redis, settings):
    ring = KeyRing(fake_redis, settings)
    key, record, _ = ring.create("ci")
    dump = b"".join(fake_redis.dump(k) or b"" for k in fake_redis.keys("*"))
    assert key.encode() not in dump
    assert [k.name for k in ring.list()] == ["ci"]


def test_openapi_documents_the_routes(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/health", "/ready"} <= set(spec["paths"])
    assert "JobRequest" in spec["components"]["schemas"]


def test_health_reports_redis_and_queues_and_ready_needs_a_worker(client):
    health = client.get("/health").get_json()
    assert health["redis"] == "ok" and health["workers"] == 0 and "inferno.cpu.high" in health["queues"]
    assert client.get("/ready").status_code == 503
    svc = client.application.extensions["inferno"]
    beat = {"hostname": "webhooks@h", "pool": "webhooks", "last_seen": time.time()}
    svc.redis.hset(svc.store.keys.workers(), beat["hostname"], json.dumps(beat))
    svc._workers_cache = None  # read again now, not within the second
    assert client.get("/health").get_json()["workers"] == 1
    assert client.get("/ready").status_code == 503  # a webhooks worker runs no job
    beat = {"hostname": "cpu@h", "pool": "cpu", "last_seen": time.time()}
    svc.redis.hset(svc.store.keys.workers(), beat["hostname"], json.dumps(beat))
    svc._workers_cache = None
    assert client.get("/ready").status_code == 200


def test_livez_answers_while_redis_is_unreachable_and_health_reports_it(make_app, fake_redis, monkeypatch):
    client = make_app(auth="required").test_client()

    def unreachable(*args, **kwargs):
        raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    monkeypatch.setattr(fake_redis, "execute_command", unreachable)
    live = client.get("/livez")  # no key needed: probes carry none
    assert live.status_code == 200 and live.get_json()["status"] == "alive"
    assert client.get("/health").get_json()["redis"] == "down" and client.get("/ready").status_code == 503


def test_models_lists_the_repository(client):
    models = {m["id"]: m for m in client.get("/models").get_json()["models"]}
    assert models["iris"]["type"] == "predict" and models["iris"]["loaded"] is False
    assert models["iris"]["capabilities"] == ["feature_importance", "predict"] and models["iris"]["size_bytes"] > 0


def test_the_api_process_never_imports_onnxruntime():
    code = ("import sys; from api import create_app; from inferno_jobs.config import Settings; "
            "create_app(Settings.from_env({}, auth='disabled')); "
            "print('onnxruntime' in sys.modules, 'workers.engine' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_a_generation_job_asking_more_tokens_than_the_models_context_is_refused_at_submit(client, tinygpt_dir):
    """As the synchronous routes refuse it: such a job could never be honoured, so it is not queued."""
    context = json.loads((tinygpt_dir / "config.json").read_text())["context_length"]
    r = client.post("/jobs", json={"type": "completion", "model": "tiny-gpt",
                                   "input": {"prompt": "hi", "max_tokens": context + 1}})
    assert r.status_code == 400, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "CONTEXT_LENGTH_EXCEEDED" and error["details"]["context_length"] == context
    ok = client.post("/jobs", json={"type": "completion", "model": "tiny-gpt",
                                    "input": {"prompt": "hi", "max_tokens": context}})
    assert ok.status_code == 202


@pytest.mark.parametrize("field, body", [
    ("input", {"type": "completion", "model": "iris", "input": {"prompt": "x", "max_tokens": 1.5}}),
    ("input", {"type": "completion", "model": "iris", "input": {"prompt": "x", "seed": 2.5}}),
    ("ttl_s", {**IRIS, "ttl_s": 30.5}),
    ("timeout_s", {**IRIS, "timeout_s": 9.9}),
])
def test_whole_number_fields_refuse_fractions_instead_of_cutting_them(client, field, body):
    r = client.post("/jobs", json=body)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "INVALID_REQUEST", r.get_json()


def test_a_generation_job_without_max_tokens_gets_the_models_default_in_the_worker(make_app, tmp_path):
    """Not a fixed 64 at submit: a model whose context is shorter than that still takes such jobs, and its
    config.json ``default_max_tokens`` applies (workers/generation.py)."""
    (tmp_path / "short-gpt").mkdir()
    (tmp_path / "short-gpt" / "config.json").write_text(json.dumps(
        {"type": "completion", "device": "cpu", "context_length": 32, "default_max_tokens": 8}))
    client = make_app(model_dir=tmp_path).test_client()
    r = client.post("/jobs", json={"type": "completion", "model": "short-gpt", "input": {"prompt": "hi"}})
    assert r.status_code == 202, r.get_json()
    stored = client.application.extensions["inferno"].store.get(r.get_json()["id"])
    assert "max_tokens" not in stored.input
    too_many = client.post("/jobs", json={"type": "completion", "model": "short-gpt",
                                          "input": {"prompt": "hi", "max_tokens": 64}})
    assert too_many.get_json()["error"]["code"] == "CONTEXT_LENGTH_EXCEEDED"


def test_generation_inputs_take_what_v1_takes(client, celery_stub, tinygpt_dir):
    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "fox"}]
    chat = client.post("/jobs", json={"type": "chat", "model": "tiny-gpt", "input": {"messages": [
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": parts}]}})
    assert chat.status_code == 202, chat.get_json()
    stored = client.application.extensions["inferno"].store.get(chat.get_json()["id"])
    assert stored.input["messages"] == [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Hello, fox"}]
    empty = client.post("/jobs", json={"type": "completion", "model": "tiny-gpt", "input": {"prompt": ""}})
    assert empty.status_code == 202, empty.get_json()  # starts from the end-of-text token (docs/models.md)


"""``/batches``, the seeds' ``/batch`` and ``/v1`` files/batches on fakeredis, with chunks run by a fake engine."""

from __future__ import annotations

import io
import json
import time

import pytest

from inferno_jobs.apikey import KeyRing
from inferno_jobs.batchstore import BatchStore
from inferno_jobs.errors import InvalidRequest
from workers.chunk import ChunkRunner

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


def upload(client, data: bytes, filename="rows.jsonl", query="", headers=None, **fields):
    form = {"file": (io.BytesIO(data), filename), **{k: v for k, v in fields.items() if v is not None}}
    return client.post(f"/batches{query}", data=form, content_type="multipart/form-data", headers=headers or {})


def rows(n, bad=()):
    lines = []
    for i in range(1, n + 1):
        lines.append('{"custom_id": "r%d", "features": [1, 2' % i if i in bad
                     else json.dumps({"custom_id": f"r{i}", "features": IRIS_ROW}))
    return ("\n".join(lines) + "\n").encode()


def fake_engine(model, inputs):
    """Succeeds with the row sum; a row starting with 0 fails that line alone."""
    out = []
    for item in inputs:
        row = item["features"][0]
        out.append(InvalidRequest("zero row") if row[0] == 0 else {"predictions": [sum(row)]})
    return out


@pytest.fixture
def batches(fake_redis, settings):
    return BatchStore(fake_redis, settings)


def run_all(batches, celery_stub, engine=fake_engine):
    runner = ChunkRunner(batches, engine)
    for sent in [s for s in celery_stub.sent if s["name"] == "inferno.run_batch_chunk"]:
        runner.run(*sent["args"])


def results(client, batch_id, path="results"):
    r = client.get(f"/batches/{batch_id}/{path}")
    assert r.status_code == 200 and r.mimetype == "application/x-ndjson"
    return [json.loads(line) for line in r.get_data(as_text=True).splitlines()]


def test_a_file_fans_out_in_chunks_of_max_batch_size_and_completes(client, celery_stub, batches):
    r = upload(client, rows(150, bad={7}), model="iris", priority="low")
    assert r.status_code == 202, r.get_json()
    batch = r.get_json()
    assert batch["object"] == "batch" and batch["status"] == "queued" and batch["type"] == "predict"
    assert batch["request_counts"] == {"total": 150, "completed": 0, "failed": 1}
    assert batch["results_url"] == f"/batches/{batch['id']}/results"
    assert r.headers["Location"].endswith(f"/batches/{batch['id']}")
    chunks = [s for s in celery_stub.sent if s["name"] == "inferno.run_batch_chunk"]
    assert len(chunks) == 3  # 149 valid lines, iris max_batch_size 64: 64 + 64 + 21 messages, not 149
    assert {s["queue"] for s in chunks} == {"inferno.cpu.low"}
    run_all(batches, celery_stub)
    done = client.get(f"/batches/{batch['id']}").get_json()
    assert done["status"] == "completed" and done["finished_at"]
    assert done["request_counts"] == {"total": 150, "completed": 149, "failed": 1}
    out = results(client, batch["id"])
    assert [l["line"] for l in out] == list(range(1, 151)) and out[0]["custom_id"] == "r1"
    assert out[0] == {"custom_id": "r1", "line": 1, "status": "succeeded", "result": {"predictions": [10.2]}}
    assert out[6]["status"] == "failed" and "not valid JSON" in out[6]["error"]["message"]
    errors = results(client, batch["id"], "errors")
    assert [(e["line"], e["custom_id"]) for e in errors] == [(7, "line-7")]


def test_a_redelivered_chunk_does_not_double_count(client, celery_stub, batches):
    batch = upload(client, rows(3), model="iris").get_json()
    run_all(batches, celery_stub)
    run_all(batches, celery_stub)  # every message delivered a second time
    runner = ChunkRunner(batches, fake_engine)
    assert batches.finish_chunk(batch["id"], 0, [(0, {"predictions": [0]}, None)]) == 0
    assert runner.run(batch["id"], 0) is None
    done = client.get(f"/batches/{batch['id']}").get_json()
    assert done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}


def test_lines_that_fail_in_the_engine_fail_alone_and_an_all_failed_batch_is_failed(client, celery_stub, batches):
    data = b'{"features": [0, 1, 1, 1]}\n{"features": [1, 1, 1, 1]}\n'
    batch = upload(client, data, model="iris").get_json()
    run_all(batches, celery_stub)
    out = results(client, batch["id"])
    assert out[0]["error"] == {"code": "INVALID_REQUEST", "message": "zero row"} and out[1]["status"] == "succeeded"
    all_bad = upload(client, b'{"features": [0, 1, 1, 1]}\n', model="iris").get_json()
    run_all(batches, celery_stub)
    assert client.get(f"/batches/{all_bad['id']}").get_json()["status"] == "failed"


def test_an_engine_crash_fails_the_chunks_lines_and_the_batch_still_ends(client, celery_stub, batches):
    def broken(model, inputs):
        raise RuntimeError("CUDA fell over")
    batch = upload(client, rows(2), model="iris").get_json()
    run_all(batches, celery_stub, broken)
    done = client.get(f"/batches/{batch['id']}").get_json()
    assert done["status"] == "failed" and done["request_counts"]["failed"] == 2
    assert results(client, batch["id"])[0]["error"]["message"] == "inference failed: CUDA fell over"


def test_a_batch_with_no_valid_line_is_failed_at_once(client, celery_stub):
    r = upload(client, b"{broken\n{also broken\n", model="iris")
    assert r.status_code == 202
    batch = r.get_json()
    assert batch["status"] == "failed" and batch["request_counts"] == {"total": 2, "completed": 0, "failed": 2}
    assert not [s for s in celery_stub.sent if s["name"] == "inferno.run_batch_chunk"]


def test_cancel_stops_unstarted_chunks_and_keeps_finished_results(client, celery_stub, batches, model_dir):
    config = json.loads((model_dir / "iris" / "config.json").read_text())
    small = model_dir / "iris-small"
    small.mkdir(exist_ok=True)
    (small / "config.json").write_text(json.dumps({**config, "max_batch_size": 2}))
    batch = upload(client, rows(6), model="iris-small").get_json()
    chunks = [s for s in celery_stub.sent if s["name"] == "inferno.run_batch_chunk"]
    assert len(chunks) == 3
    runner = ChunkRunner(batches, fake_engine)
    runner.run(*chunks[0]["args"])
    assert client.get(f"/batches/{batch['id']}").get_json()["status"] == "running"
    canceled = client.post(f"/batches/{batch['id']}/cancel").get_json()
    assert canceled["status"] == "canceled" and canceled["finished_at"]
    for sent in chunks[1:]:
        assert runner.run(*sent["args"]) is None  # never started
    out = results(client, batch["id"])
    assert [l["status"] for l in out] == ["succeeded", "succeeded", "canceled", "canceled", "canceled", "canceled"]
    assert out[0]["result"] == {"predictions": [10.2]}
    assert client.get(f"/batches/{batch['id']}").get_json()["request_counts"]["completed"] == 2
    again = client.post(f"/batches/{batch['id']}/cancel")
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "CONFLICT"


def test_a_batch_still_running_when_its_completion_window_ends_expires(client, celery_stub, batches, model_dir,
                                                                        monkeypatch):
    from api.openai_batches import openai_batch
    from api.openai_files import has_lines
    import inferno_jobs.batchstore as batchstore

    config = json.loads((model_dir / "iris" / "config.json").read_text())
    small = model_dir / "iris-small"
    small.mkdir(exist_ok=True)
    (small / "config.json").write_text(json.dumps({**config, "max_batch_size": 2}))
    r = upload(client, rows(4), model="iris-small", completion_window="1h")
    assert r.status_code == 202, r.get_json()
    batch = r.get_json()
    assert batch["completion_window"] == "1h" and batch["expires_at"]
    chunks = [s for s in celery_stub.sent if s["name"] == "inferno.run_batch_chunk"]
    runner = ChunkRunner(batches, fake_engine)
    runner.run(*chunks[0]["args"])
    assert batches.expire_due() == []  # the window is still open
    created = batches.get(batch["id"]).created_at
    monkeypatch.setattr(batchstore, "now", lambda: created + 3601)
    assert batches.expire_due() == [batch["id"]]
    assert batches.expire_due() == []  # once
    ended = client.get(f"/batches/{batch['id']}").get_json()
    assert ended["status"] == "expired" and ended["request_counts"] == {"total": 4, "completed": 2, "failed": 0}
    assert runner.run(*chunks[1]["args"]) is None  # never started
    out = results(client, batch["id"])
    assert [line["status"] for line in out] == ["succeeded", "succeeded", "expired", "expired"]
    assert out[2]["error"]["code"] == "BATCH_EXPIRED"
    stored = batches.get(batch["id"])
    view = openai_batch(stored)
    assert view["status"] == "expired" and view["expired_at"] == int(stored.finished_at)
    assert has_lines(stored, "errors") and has_lines(stored, "output")


def test_invalid_completion_window_is_refused(client):
    r = upload(client, rows(2), model="iris", completion_window="tomorrow")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "INVALID_REQUEST"


def test_retry_makes_a_batch_of_the_failed_lines_keeping_custom_ids(client, celery_stub, batches):
    data = rows(2) + b'{"custom_id": "z", "features": [0, 1, 1, 1]}\n{broken\n'
    batch = upload(client, data, model="iris").get_json()
    assert client.post(f"/batches/{batch['id']}/retry").status_code == 409  # still running
    run_all(batches, celery_stub)
    celery_stub.clear()
    r = client.post(f"/batches/{batch['id']}/retry")
    assert r.status_code == 202, r.get_json()
    child = r.get_json()
    assert child["retry_of"] == batch["id"] and child["request_counts"]["total"] == 1  # the broken line is not rerun
    run_all(batches, celery_stub, lambda model, inputs: [{"predictions": [1]} for _ in inputs])
    out = results(client, child["id"])
    assert out == [{"custom_id": "z", "line": 3, "status": "succeeded", "result": {"predictions": [1]}}]
    assert client.post(f"/batches/{child['id']}/retry").status_code == 409  # nothing failed


def test_a_batch_is_retried_once_and_a_second_retry_names_the_first(client, celery_stub, batches):
    batch = upload(client, rows(3), model="iris").get_json()
    run_all(batches, celery_stub, lambda model, inputs: [InvalidRequest("down") for _ in inputs])
    celery_stub.clear()
    celery_stub.fail = True  # the first try cannot enqueue: not accepted, and the parent may be retried again
    assert client.post(f"/batches/{batch['id']}/retry").status_code == 500
    assert client.get(f"/batches/{batch['id']}").get_json()["retried_as"] is None
    celery_stub.fail = False
    first = client.post(f"/batches/{batch['id']}/retry")
    assert first.status_code == 202, first.get_json()
    child = first.get_json()
    second = client.post(f"/batches/{batch['id']}/retry")
    assert second.status_code == 409
    error = second.get_json()["error"]
    assert error["code"] == "CONFLICT" and error["details"] == {"retried_as": child["id"]}
    assert child["id"] in error["message"]
    assert client.get(f"/batches/{batch['id']}").get_json()["retried_as"] == child["id"]
    assert child["retried_as"] is None and child["retry_of"] == batch["id"]
    assert len([s for s in celery_stub.sent if s["name"] == "inferno.run_batch_chunk"]) == 1  # one batch runs them
    listed = client.get("/batches").get_json()["data"]
    assert [b["id"] for b in listed] == [child["id"], batch["id"]]


def test_concurrent_retries_of_one_batch_make_one_batch(make_app, celery_stub, batches, fake_redis, settings):
    from concurrent.futures import ThreadPoolExecutor

    client = make_app().test_client()
    batch = upload(client, rows(3), model="iris").get_json()
    run_all(batches, celery_stub, lambda model, inputs: [InvalidRequest("down") for _ in inputs])
    app = make_app()

    def retry(_):
        return app.test_client().post(f"/batches/{batch['id']}/retry").status_code
    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(retry, range(16)))
    assert codes == [202] + [409] * 15
    assert len(client.get("/batches").get_json()["data"]) == 2


def test_dry_run_validates_and_enqueues_nothing(client, celery_stub, fake_redis):
    r = upload(client, rows(3, bad={2}), model="iris", query="?dry_run=true")
    assert r.status_code == 200
    body = r.get_json()
    assert body["request_counts"] == {"total": 3, "valid": 2, "invalid": 1}
    assert body["errors"][0]["line"] == 2 and "not valid JSON" in body["errors"][0]["error"]["message"]
    assert celery_stub.sent == [] and client.get("/batches").get_json()["data"] == []


def test_limits_answer_413(make_app):
    client = make_app(batch_max_file_bytes=100, batch_max_lines=2).test_client()
    big = upload(client, b"x" * 200, "p.txt", model="iris")
    assert big.status_code == 413 and big.get_json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert "INFERNO_BATCH_MAX_FILE_BYTES" in big.get_json()["error"]["message"]
    many = upload(client, rows(3)[:99], model="iris")
    assert many.status_code in (202, 413)
    lines = client.post("/batches", json={"model": "iris", "requests": [{"features": IRIS_ROW}] * 3})
    assert lines.status_code == 413 and "INFERNO_BATCH_MAX_LINES" in lines.get_json()["error"]["message"]


def test_request_errors_are_400_or_404(client):
    assert upload(client, rows(1), model="nope").status_code == 404
    no_file = client.post("/batches", data={"model": "iris"}, content_type="multipart/form-data")
    assert no_file.status_code == 400 and "file" in no_file.get_json()["error"]["message"]
    wrong_type = upload(client, rows(1), model="iris", type="chat")
    assert wrong_type.status_code == 400 and wrong_type.get_json()["error"]["code"] == "INVALID_REQUEST"
    bad_params = upload(client, b"hi\n", "p.txt", model="iris", params="{not json")
    assert bad_params.status_code == 400
    assert client.post("/batches", data=b"{", content_type="application/json").status_code == 400
    assert client.get("/batches/batch_01nothing").status_code == 404


def test_json_body_and_the_seeds_shape(client, celery_stub, batches):
    r = client.post("/batches", json={"model": "iris", "requests": [{"id": "a", "features": IRIS_ROW}]})
    assert r.status_code == 202 and r.get_json()["request_counts"]["total"] == 1
    seed = client.post("/batch", json={"model": "iris", "requests": [{"id": "req1", "features": IRIS_ROW},
                                                                     {"id": "req2", "features": IRIS_ROW}]})
    assert seed.status_code == 202
    body = seed.get_json()
    assert set(body) == {"batch_id", "status", "total_requests", "created"}
    assert body["status"] == "processing" and body["total_requests"] == 2 and isinstance(body["created"], int)
    run_all(batches, celery_stub)
    status = client.get(f"/batch/{body['batch_id']}").get_json()
    assert status == {"batch_id": body["batch_id"], "status": "completed", "completed": 2, "failed": 0, "total": 2,
                      "results_url": f"/batch/{body['batch_id']}/results"}
    assert client.get(status["results_url"]).status_code == 200


def test_list_is_cursor_paged_and_tenant_scoped(make_app, fake_redis, settings):
    app = make_app(auth="required")
    client = app.test_client()
    ring = KeyRing(fake_redis, app.extensions["inferno"].settings)
    a = {"Authorization": f"Bearer {ring.create('a')[0]}"}
    b = {"X-API-Key": ring.create("b")[0]}
    ids = [upload(client, rows(1), model="iris", headers=a).get_json()["id"] for _ in range(3)]
    page = client.get("/batches?limit=2", headers=a).get_json()
    assert [x["id"] for x in page["data"]] == ids[::-1][:2] and page["next_cursor"] == ids[1]
    rest = client.get(f"/batches?limit=2&cursor={page['next_cursor']}", headers=a).get_json()
    assert [x["id"] for x in rest["data"]] == [ids[0]] and rest["next_cursor"] is None
    assert client.get("/batches", headers=b).get_json()["data"] == []
    for path in (f"/batches/{ids[0]}", f"/batches/{ids[0]}/results", f"/batch/{ids[0]}"):
        assert client.get(path, headers=b).status_code == 404
    assert client.post(f"/batches/{ids[0]}/cancel", headers=b).status_code == 404
    assert client.get("/batches").status_code == 401


def test_batch_webhook_goes_through_the_outbox(make_app, celery_stub, batches, fake_redis):
    from inferno_jobs.batchstore import batch_target

    client = make_app(webhook_allowed_networks=("127.0.0.0/8",)).test_client()
    refused = upload(client, rows(1), model="iris", webhook_url="http://10.0.0.1/hook")
    assert refused.status_code == 400  # the SSRF guard, as for jobs
    r = upload(client, rows(1), model="iris", webhook_url="http://127.0.0.1:9/hook")
    assert r.status_code == 202, r.get_json()
    batch = r.get_json()
    run_all(batches, celery_stub)
    outbox = [json.loads(raw) for raw in fake_redis.lrange(batches.keys.outbox(), 0, -1)]
    deliveries = [s for s in celery_stub.sent if s["name"] == "inferno.deliver_webhook"]
    events = outbox + [d["args"][0] for d in deliveries]
    assert [(e["type"], e["batch_id"]) for e in events] == [("batch.completed", batch["id"])]
    target = batch_target(batches.settings, fake_redis)(batch["id"])
    assert target.url == "http://127.0.0.1:9/hook" and target.data["status"] == "completed"


def test_v1_files_and_batches_with_openai_shapes(client, celery_stub, batches, fake_redis, model_dir):
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/embeddings", "body": {"model": "iris", "input": "x"}}
             for i in range(2)]
    data = ("\n".join(json.dumps(l) for l in lines) + "\n").encode()
    f = client.post("/v1/files", data={"file": (io.BytesIO(data), "in.jsonl"), "purpose": "batch"},
                    content_type="multipart/form-data")
    assert f.status_code == 200, f.get_json()
    file = f.get_json()
    assert file["object"] == "file" and file["bytes"] == len(data) and file["purpose"] == "batch"
    assert client.get(f"/v1/files/{file['id']}/content").data == data
    # iris does not serve embeddings: OpenAI's error shape
    r = client.post("/v1/batches", json={"input_file_id": file["id"], "endpoint": "/v1/embeddings",
                                         "completion_window": "24h"})
    assert r.status_code == 400
    assert set(r.get_json()["error"]) == {"message", "type", "param", "code"}
    assert r.get_json()["error"]["type"] == "invalid_request_error"
    missing = client.get("/v1/batches/batch_01nothing")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
    bad = client.post("/v1/files", data={"file": (io.BytesIO(data), "in.jsonl"), "purpose": "fine-tune"},
                      content_type="multipart/form-data")
    assert bad.status_code == 400 and bad.get_json()["error"]["param"] == "purpose"


def fake_embedding_model(model_dir, name="fake-embed", max_batch_size=8) -> str:
    """An embedding model's config over iris's files (the engine is faked)."""
    import shutil

    target = model_dir / name
    if not target.exists():
        shutil.copytree(model_dir / "iris", target)
        config = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, "type": "embedding",
                                                        "max_batch_size": max_batch_size}))
    return name


def v1_upload(client, lines: list[dict]) -> dict:
    data = ("\n".join(json.dumps(l) for l in lines) + "\n").encode()
    return client.post("/v1/files", data={"file": (io.BytesIO(data), "in.jsonl"), "purpose": "batch"},
                       content_type="multipart/form-data").get_json()


FAKE_VECTOR = {"embeddings": [[0.5, 0.5]], "dim": 2, "usage": {"prompt_tokens": 1, "total_tokens": 1}}


def test_v1_batch_of_embeddings_end_to_end_with_a_fake_engine(client, celery_stub, batches, model_dir):
    fake_embedding_model(model_dir)
    lines = [{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "fake-embed", "input": "x"}},
             {"custom_id": "b", "method": "POST", "url": "/v1/embeddings", "body": {"model": "other", "input": "y"}}]
    file = v1_upload(client, lines)
    created = client.post("/v1/batches", json={"input_file_id": file["id"], "endpoint": "/v1/embeddings",
                                               "completion_window": "24h", "metadata": {"k": "v"}})
    assert created.status_code == 200, created.get_json()
    batch = created.get_json()
    assert batch["status"] == "in_progress" and batch["endpoint"] == "/v1/embeddings"
    assert batch["input_file_id"] == file["id"] and batch["metadata"] == {"k": "v"}
    assert batch["output_file_id"] is None
    run_all(batches, celery_stub, lambda model, inputs: [FAKE_VECTOR for _ in inputs])
    done = client.get(f"/v1/batches/{batch['id']}").get_json()
    assert done["status"] == "completed" and done["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    out = [json.loads(l) for l in client.get(f"/v1/files/{done['output_file_id']}/content").get_data(True).splitlines()]
    assert out[0]["custom_id"] == "a" and out[0]["error"] is None
    assert out[0]["response"]["status_code"] == 200
    assert out[0]["response"]["body"] == {"object": "list", "model": "fake-embed",
                                          "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.5]}],
                                          "usage": {"prompt_tokens": 1, "total_tokens": 1}}
    errors = [json.loads(l) for l in
              client.get(f"/v1/files/{done['error_file_id']}/content").get_data(True).splitlines()]
    assert errors[0]["custom_id"] == "b" and errors[0]["response"]["status_code"] == 400
    assert "differs from the batch's model" in errors[0]["response"]["body"]["error"]["message"]
    listed = client.get("/v1/batches?limit=1").get_json()
    assert listed["object"] == "list" and listed["data"][0]["id"] == batch["id"]
    for bad, param in (("limit=0", "limit"), ("limit=x", "limit"), ("after=zzzz", "after"), ("order=up", "order")):
        r = client.get(f"/v1/batches?{bad}")
        assert r.status_code == 400 and r.get_json()["error"]["param"] == param, (bad, r.get_json())
    assert client.get(f"/v1/batches?after={batch['id']}").get_json()["data"] == []
    r = client.post("/v1/batches", json={"input_file_id": batch["input_file_id"], "endpoint": "/v1/nope",
                                         "completion_window": "24h"})
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "endpoint"
    assert client.post(f"/v1/batches/{batch['id']}/cancel").status_code == 409


def test_a_v1_batch_is_cancelling_while_a_chunk_that_was_running_runs_on(client, celery_stub, batches, model_dir):
    model = fake_embedding_model(model_dir, "fake-embed-1", max_batch_size=1)
    file = v1_upload(client, [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/embeddings",
                               "body": {"model": model, "input": "x"}} for i in range(3)])
    batch = client.post("/v1/batches", json={"input_file_id": file["id"], "endpoint": "/v1/embeddings",
                                             "completion_window": "24h"}).get_json()
    chunks = [s["args"] for s in celery_stub.sent if s["name"] == "inferno.run_batch_chunk"]
    assert len(chunks) == 3
    during = []

    def engine(model, inputs):  # the batch is canceled while this chunk runs
        during.append(client.post(f"/v1/batches/{batch['id']}/cancel").get_json())
        early = client.post(f"/batches/{batch['id']}/retry")  # its failed lines are not all known yet
        assert early.status_code == 409 and early.get_json()["error"]["details"]["chunks_running"] == 1
        return [FAKE_VECTOR for _ in inputs]
    runner = ChunkRunner(batches, engine)
    assert runner.run(*chunks[0]) == 1
    (cancelling,) = during
    assert cancelling["status"] == "cancelling" and cancelling["cancelling_at"]
    assert cancelling["cancelled_at"] is None and cancelling["output_file_id"] is None
    assert client.get(f"/batches/{batch['id']}").get_json()["status"] == "canceled"  # the native status: at once
    assert [runner.run(*args) for args in chunks[1:]] == [None, None]  # never started
    cancelled = client.get(f"/v1/batches/{batch['id']}").get_json()
    assert cancelled["status"] == "cancelled" and cancelled["cancelled_at"] >= cancelled["cancelling_at"]
    assert cancelled["request_counts"] == {"total": 3, "completed": 1, "failed": 0}
    out = client.get(f"/v1/files/{cancelled['output_file_id']}/content").get_data(True).splitlines()
    assert [json.loads(l)["custom_id"] for l in out] == ["c0"]


def test_a_chunk_whose_worker_died_does_not_keep_a_canceled_batch_cancelling(client, celery_stub, batches,
                                                                             model_dir, fake_redis):
    model = fake_embedding_model(model_dir, "fake-embed-1", max_batch_size=1)
    file = v1_upload(client, [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/embeddings",
                               "body": {"model": model, "input": "x"}} for i in range(2)])
    batch = client.post("/v1/batches", json={"input_file_id": file["id"], "endpoint": "/v1/embeddings",
                                             "completion_window": "24h"}).get_json()
    key = batches.keys.batch(batch["id"])
    assert batches.start_chunk(batch["id"], 0) and batches.start_chunk(batch["id"], 1)  # both die running
    fake_redis.hset(key, "run:0", time.time() - 3600)  # past any chunk's hard time limit
    assert client.post(f"/v1/batches/{batch['id']}/cancel").get_json()["status"] == "cancelling"  # chunk 1
    assert not batches.start_chunk(batch["id"], 1)  # its message comes back once its worker is gone: no run
    assert not fake_redis.hexists(key, "run:1")
    assert client.get(f"/v1/batches/{batch['id']}").get_json()["status"] == "cancelled"


def test_openapi_lists_the_batch_routes(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    for path in ("/batches", "/batches/{batch_id}/results", "/batch", "/v1/batches", "/v1/files"):
        assert path in paths


def test_chunks_whose_messages_were_lost_are_listed_once_per_resend_period(client, celery_stub, batches,
                                                                           monkeypatch):
    import inferno_jobs.batchstore as batchstore_module

    batch = upload(client, rows(150), model="iris").get_json()
    assert batches.stale_chunks(60) == []  # just created: its messages are still on their way
    first = [s for s in celery_stub.sent if s["name"] == "inferno.run_batch_chunk"][0]
    ChunkRunner(batches, fake_engine).run(*first["args"])  # chunk 0 ran; chunks 1 and 2 were lost
    created = batches.get(batch["id"]).created_at
    monkeypatch.setattr(batchstore_module, "now", lambda: created + 61)
    stale = batches.stale_chunks(60)
    assert [(b.id, index) for b, index in stale] == [(batch["id"], 1), (batch["id"], 2)]
    assert batches.stale_chunks(60) == []  # marked re-sent: not again before another period
    monkeypatch.setattr(batchstore_module, "now", lambda: created + 125)
    assert len(batches.stale_chunks(60)) == 2


def test_batch_lines_are_counted_once_per_stored_chunk(client, celery_stub, batches):
    from inferno_jobs.metrics import BATCH_LINES

    upload(client, rows(70, bad={3}) + json.dumps({"custom_id": "zero", "features": [0, 1, 2, 3]}).encode()
           + b"\n", model="iris")
    runner = ChunkRunner(batches, fake_engine, metrics=batches_metrics(batches))
    sent = [s for s in celery_stub.sent if s["name"] == "inferno.run_batch_chunk"]
    for message in sent + sent:  # every chunk delivered twice: counted once
        runner.run(*message["args"])
    counts = batches_metrics(batches).counter(BATCH_LINES)
    assert counts == {("iris", "succeeded"): 69, ("iris", "failed"): 1}  # line 3 failed validation, not a run


def batches_metrics(batches):
    from inferno_jobs.metrics import Metrics

    return Metrics(batches.redis, batches.keys)


def test_v1_files_lists_a_tenants_uploads_newest_first_with_paging(client):
    ids = []
    for i in range(3):
        r = client.post("/v1/files", data={"file": (io.BytesIO(b'{"prompt": "x"}\n'), f"f{i}.jsonl"),
                                           "purpose": "batch"}, content_type="multipart/form-data")
        assert r.status_code == 200
        ids.append(r.get_json()["id"])
    page = client.get("/v1/files?limit=2").get_json()
    assert page["object"] == "list" and [f["id"] for f in page["data"]] == ids[:0:-1] and page["has_more"]
    rest = client.get(f"/v1/files?limit=2&after={page['last_id']}").get_json()
    assert [f["id"] for f in rest["data"]] == [ids[0]] and not rest["has_more"]
    bad = client.get("/v1/files?limit=0")
    assert bad.status_code == 400 and bad.get_json()["error"]["param"] == "limit"
    bad = client.get(f"/v1/files?after={page['last_id'][:-1]}")
    assert bad.status_code == 400 and bad.get_json()["error"]["param"] == "after"


def test_usage_sums_the_tokens_of_the_lines_that_succeeded_once(client, celery_stub, batches):
    def counting_engine(model, inputs):
        return [InvalidRequest("zero row") if item["features"][0][0] == 0
                else {"predictions": [1], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
                for item in inputs]

    data = b'{"features": [1, 1, 1, 1]}\n{"features": [0, 1, 1, 1]}\n{"features": [2, 1, 1, 1]}\n'
    batch = upload(client, data, model="iris").get_json()
    assert batch["usage"] == {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    run_all(batches, celery_stub, counting_engine)
    run_all(batches, celery_stub, counting_engine)  # a redelivered chunk counts nothing twice
    done = client.get(f"/batches/{batch['id']}").get_json()
    assert done["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    assert done["usage"] == {"input_tokens": 6, "output_tokens": 4, "total_tokens": 10}


def test_v1_batch_of_invalid_lines_only_says_why_the_first_is_invalid(client):
    data = (b'{not json}\n' + json.dumps({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
                                          "body": {"model": "tiny-gpt"}}).encode() + b"\n")
    file = client.post("/v1/files", data={"file": (io.BytesIO(data), "bad.jsonl"), "purpose": "batch"},
                       content_type="multipart/form-data").get_json()
    r = client.post("/v1/batches", json={"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                                         "completion_window": "24h"})
    error = r.get_json()["error"]
    assert r.status_code == 400 and error["param"] == "input_file_id"
    assert error["message"].startswith("no line of the file is valid; line 1: "), error

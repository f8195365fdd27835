"""The seeds' endpoints on fakeredis: their own request and response shapes (seeds 000 and 001), seed 003's
validation table in the native error shape, and GET /jobs/<id>/events."""

from __future__ import annotations

import logging

import pytest

from tests.unit.compat_fixtures import TOKENS, app_of, compat_models, inline, sse_events  # noqa: F401


@pytest.fixture
def seed(app_of):
    return app_of().test_client()


def test_inference_in_the_seed_shape(seed, inline):
    r = seed.post("/inference", json={"model": "tiny-gpt", "prompt": "What is the capital of France?",
                                      "max_tokens": 100, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
                                      "repeat_penalty": 1.1, "stop": ["\n", "###"], "stream": False})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert set(body) == {"id", "model", "choices", "usage", "created", "processing_time_ms"}
    assert body["choices"] == [{"text": "".join(TOKENS), "index": 0, "finish_reason": "stop"}]
    assert inline.sent[-1]["queue"] == "inferno.cpu.high"
    job = seed.get(f"/jobs/{body['id']}").get_json()
    assert job["type"] == "completion" and job["priority"] == "high"


def test_inference_stream_sends_token_events_then_done(seed):
    r = seed.post("/inference/stream", json={"model": "tiny-gpt", "prompt": "Tell me a joke", "max_tokens": 100,
                                             "stream": True})
    assert r.mimetype == "text/event-stream"
    events = sse_events(r)
    assert events[:-1] == [{"token": t, "index": i} for i, t in enumerate(TOKENS)]
    assert events[-1]["done"] is True and events[-1]["finish_reason"] == "stop"


def test_embeddings_in_the_seed_shape(seed):
    body = seed.post("/embeddings", json={"model": "minilm", "input": ["Hello world", "How are you?"],
                                          "encoding_format": "float"}).get_json()
    assert body["model"] == "minilm" and [d["index"] for d in body["data"]] == [0, 1]
    assert body["data"][0]["embedding"] == [0.5] * 4 and body["usage"]["total_tokens"] == 6


def test_predict_batch_and_async_in_the_seed_shape(seed, inline):
    one = seed.post("/predict", json={"model": "iris", "features": [[5.1, 3.5, 1.4, 0.2]],
                                      "request_id": "optional-client-request-id"}).get_json()
    assert one["request_id"] == "optional-client-request-id" and one["success"] is True
    assert one["predictions"] == [[0]] and one["error"] is None and "timestamp" in one
    assert one["metadata"]["labels"] == ["setosa"]
    batch = seed.post("/predict/batch", json={"model": "iris", "batch": [[[0.1, 0.2, 0.3, 0.4]]] * 3,
                                              "request_ids": ["id1", "id2", "id3"]}).get_json()
    assert [r["request_id"] for r in batch["results"]] == ["id1", "id2", "id3"]
    assert all(r["success"] for r in batch["results"]) and batch["metadata"]["batch_size"] == 3
    assert batch["metadata"]["success_rate"] == 1.0
    inline.run = False
    queued = seed.post("/predict/async", json={"model": "iris", "features": [[0.1, 0.2, 0.3, 0.4]],
                                               "priority": "low", "timeout_ms": 5000})
    assert queued.status_code == 202
    body = queued.get_json()
    assert body["status"] == "pending" and body["eta_seconds"] >= 0
    job = seed.get(f"/jobs/{body['job_id']}").get_json()
    assert job["priority"] == "low" and job["status"] == "queued"


def test_predict_without_a_model_needs_a_default(seed, app_of):
    r = seed.post("/predict", json={"features": [[1, 2, 3, 4]]})
    assert r.status_code == 400 and "model is required" in r.get_json()["error"]["message"]
    client = app_of(default_predict_model="iris").test_client()
    assert client.post("/predict", json={"features": [[1, 2, 3, 4]]}).get_json()["success"] is True
    wrong = client.post("/predict", json={"features": [[1, 2, 3]]})
    assert wrong.status_code == 400 and wrong.get_json()["error"]["code"] == "INVALID_REQUEST"


# Seed 003's validation table, row by row, in the native error shape.
ROWS = [
    ("/inference", {"prompt": "Hello"}, 400, "model is required", "INVALID_REQUEST"),
    ("/inference", {"model": "tiny-gpt", "prompt": "Hello", "temperature": 3.0}, 400,
     "temperature must be between 0 and 2", "INVALID_REQUEST"),
    ("/inference", {"model": "tiny-gpt", "prompt": "Hello", "top_p": 1.5}, 400, "top_p must be between 0 and 1",
     "INVALID_REQUEST"),
    ("/inference/stream", {"model": "tiny-gpt", "prompt": "Hello", "max_tokens": 0}, 400,
     "max_tokens must be between 1 and 2000000", "INVALID_REQUEST"),
    ("/embeddings", {"model": "minilm", "input": ""}, 400, "input is required", "INVALID_REQUEST"),
    ("/embeddings", {"model": "minilm", "input": "a" * 8001}, 400, "input length must not exceed 8000",
     "INVALID_REQUEST"),
    ("/inference", {"model": "unknown", "prompt": "Hello"}, 404, "model not found", "MODEL_NOT_FOUND"),
]


@pytest.mark.parametrize("path,body,status,message,code", ROWS)
def test_seed_003_validation_rows(seed, inline, path, body, status, message, code):
    r = seed.post(path, json=body)
    assert r.status_code == status
    payload = r.get_json()
    assert payload["error"]["code"] == code and message in payload["error"]["message"]
    assert set(payload) == {"error", "request_id", "timestamp"}
    assert not inline.sent


def test_unknown_route_and_boundaries(seed):
    r = seed.get("/invalid")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "NOT_FOUND"
    assert seed.post("/embeddings", json={"model": "minilm", "input": "a" * 8000}).status_code == 200
    assert seed.post("/inference", json={"model": "tiny-gpt", "prompt": "x", "max_tokens": 1}).status_code == 200


def test_job_events_stream_status_changes_and_tokens(seed):
    job = seed.post("/jobs", json={"type": "completion", "model": "tiny-gpt",
                                   "input": {"prompt": "Once", "stream": True}}).get_json()
    r = seed.get(f"/jobs/{job['id']}/events")
    text = r.get_data(as_text=True)
    kinds = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert kinds[:2] == ["status", "status"] and kinds[-2:] == ["status", "done"]
    assert kinds.count("token") == len(TOKENS)
    events = sse_events(r)
    assert [e["status"] for e in events if "status" in e and "object" not in e] == ["queued", "running", "succeeded"]
    assert events[-1]["object"] == "job" and events[-1]["result"]["text"] == "".join(TOKENS)
    assert seed.get("/jobs/job_nope/events").status_code == 404

    # Every event but done has an id; a client that reconnects with the last it saw gets only what followed.
    blocks = [b for b in text.split("\n\n") if b.startswith("id: ")]
    assert len(blocks) == len(kinds) - 1
    third = blocks[2].splitlines()[0][4:]
    resumed = seed.get(f"/jobs/{job['id']}/events", headers={"Last-Event-ID": third}).get_data(as_text=True)
    assert resumed.split("\n\n")[0] == blocks[3] and resumed.count("id: ") == len(blocks) - 3
    by_query = seed.get(f"/jobs/{job['id']}/events?last_event_id={third}").get_data(as_text=True)
    assert by_query.split("\n\n")[0] == blocks[3]
    bad = seed.get(f"/jobs/{job['id']}/events", headers={"Last-Event-ID": "soon"})
    assert bad.status_code == 400 and bad.get_json()["error"]["details"]["field"] == "Last-Event-ID"


def test_the_request_log_line_names_the_jobs_a_request_created(seed, inline, caplog):
    """One access-log line per request (api/access_log.py), with the job it created, or all of them."""
    with caplog.at_level(logging.INFO, logger="inferno.access"):
        one = seed.post("/predict/async", json={"model": "iris", "features": [[0.1, 0.2, 0.3, 0.4]]}).get_json()
        seed.post("/predict/batch", json={"model": "iris", "batch": [[[0.1, 0.2, 0.3, 0.4]]] * 3})
    single, batch = [r for r in caplog.records if r.name == "inferno.access" and r.getMessage() == "request"]
    assert single.path == "/predict/async" and single.job_id == one["job_id"] and single.model == "iris"
    assert single.priority == "normal" and single.type == "predict" and not hasattr(single, "job_ids")
    assert batch.path == "/predict/batch" and len(batch.job_ids) == 3 and batch.job_id == batch.job_ids[0]

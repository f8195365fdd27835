"""The OpenAI-compatible surface on fakeredis: response and chunk shapes, jobs on the high queue, seed 003's
validation table in OpenAI's error shape, the sync wait's 504, and cancel on disconnect."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest

from tests.unit.compat_fixtures import TOKENS, app_of, compat_models, inline, sse_events  # noqa: F401

CHAT = {"model": "tiny-gpt", "messages": [{"role": "user", "content": "Hello!"}]}


@pytest.fixture
def v1(app_of):
    return app_of().test_client()


def test_chat_completion_is_a_high_priority_job_with_openai_shape(v1, inline):
    r = v1.post("/v1/chat/completions", json={**CHAT, "temperature": 0.7, "max_tokens": 20})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny-gpt"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "".join(TOKENS)}
    assert body["choices"][0]["finish_reason"] == "stop" and body["usage"]["total_tokens"] == 6
    sent = inline.sent[-1]
    assert sent["queue"] == "inferno.cpu.high" and sent["args"] == [body["id"]] == [r.headers["X-Job-ID"]]
    job = v1.get(f"/jobs/{body['id']}").get_json()
    assert job["status"] == "succeeded" and job["type"] == "chat" and job["priority"] == "high"


def test_chat_stream_sends_chunks_as_tokens_then_done(v1, inline):
    r = v1.post("/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "".join(TOKENS)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(TOKENS)
    job = v1.get(f"/jobs/{chunks[0]['id']}").get_json()
    assert job["status"] == "succeeded"


def test_completions_take_one_prompt_or_a_list(v1):
    one = v1.post("/v1/completions", json={"model": "tiny-gpt", "prompt": "Once", "max_tokens": 5, "stop": "\n"})
    assert one.status_code == 200 and one.get_json()["object"] == "text_completion"
    assert one.get_json()["choices"][0]["text"] == "".join(TOKENS)
    two = v1.post("/v1/completions", json={"model": "tiny-gpt", "prompt": ["a", "b"], "presence_penalty": 0.5,
                                           "frequency_penalty": 0.5}).get_json()
    assert [c["index"] for c in two["choices"]] == [0, 1] and two["usage"]["total_tokens"] == 12
    stream = sse_events(v1.post("/v1/completions", json={"model": "tiny-gpt", "prompt": "a", "stream": True}))
    assert stream[-1] == "[DONE]" and "".join(c["choices"][0]["text"] for c in stream[:-1]) == "".join(TOKENS)


def test_embeddings_float_and_base64(v1):
    r = v1.post("/v1/embeddings", json={"model": "minilm", "input": ["a", "b"]}).get_json()
    assert r["object"] == "list" and [d["index"] for d in r["data"]] == [0, 1]
    assert r["data"][0]["embedding"] == [0.5] * 4 and r["usage"]["prompt_tokens"] == 6
    b64 = v1.post("/v1/embeddings", json={"model": "minilm", "input": "a", "encoding_format": "base64"}).get_json()
    vector = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    assert vector.tolist() == [0.5] * 4


def test_models_list_in_openai_shape(v1):
    body = v1.get("/v1/models").get_json()
    assert body["object"] == "list"
    assert {m["id"] for m in body["data"]} == {"tiny-gpt", "minilm", "iris", "diabetes"}
    assert all(m["object"] == "model" and m["owned_by"] for m in body["data"])
    assert v1.get("/v1/models/minilm").get_json()["id"] == "minilm"
    assert v1.get("/v1/models/nope").status_code == 404


# Seed 003's validation table, row by row, in OpenAI's error shape.
ROWS = [
    ("/v1/chat/completions", {"messages": CHAT["messages"]}, 400, "model is required", "model"),
    ("/v1/chat/completions", {**CHAT, "temperature": 3.0}, 400, "temperature must be between 0 and 2", "temperature"),
    ("/v1/chat/completions", {**CHAT, "top_p": 1.5}, 400, "top_p must be between 0 and 1", "top_p"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 0}, 400, "max_tokens must be between 1 and 2000000",
     "max_tokens"),
    ("/v1/embeddings", {"model": "minilm", "input": ""}, 400, "input is required", "input"),
    ("/v1/embeddings", {"model": "minilm", "input": "a" * 8001}, 400, "input length must not exceed 8000", "input"),
    ("/v1/chat/completions", {**CHAT, "model": "unknown"}, 404, "model not found", "model"),
]


@pytest.mark.parametrize("path,body,status,message,param", ROWS)
def test_seed_003_validation_rows(v1, inline, path, body, status, message, param):
    r = v1.post(path, json=body)
    assert r.status_code == status
    error = r.get_json()["error"]
    assert message in error["message"] and error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert not inline.sent  # nothing was queued


def test_validation_boundaries_and_unknown_route(v1):
    assert v1.post("/v1/embeddings", json={"model": "minilm", "input": "a" * 8000}).status_code == 200
    assert v1.post("/v1/chat/completions", json={**CHAT, "temperature": 2.0, "top_p": 0.0}).status_code == 200
    r = v1.get("/v1/invalid")
    assert r.status_code == 404 and "endpoint not found" in r.get_json()["error"]["message"]
    bad_json = v1.post("/v1/chat/completions", data="{nope", content_type="application/json")
    assert bad_json.status_code == 400 and bad_json.get_json()["error"]["type"] == "invalid_request_error"
    unknown = v1.post("/v1/chat/completions", json={**CHAT, "tools": []}).get_json()["error"]
    assert "Unrecognized request argument" in unknown["message"]
    too_long = v1.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2_000_000})
    assert too_long.status_code == 400 and too_long.get_json()["error"]["code"] == "context_length_exceeded"
    wrong_type = v1.post("/v1/embeddings", json={"model": "tiny-gpt", "input": "a"})
    assert wrong_type.status_code == 400


def test_auth_errors_are_401_in_openai_shape(app_of):
    client = app_of(auth="required").test_client()
    r = client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.get_json()["error"]["type"] == "authentication_error"
    assert client.get("/v1/models").status_code == 401


def test_sync_wait_answers_504_with_the_job_id_and_no_retry(app_of, inline):
    inline.run = False  # no worker: the job stays queued
    client = app_of(sync_wait_s=1).test_client()
    started = time.monotonic()
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 504 and 0.9 < time.monotonic() - started < 5
    assert r.headers["x-should-retry"] == "false"
    job_id = inline.sent[-1]["args"][0]
    assert job_id in r.get_json()["error"]["message"]
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "queued"  # it goes on; poll it


def test_a_stream_closed_early_cancels_its_job(app_of, inline):
    inline.run = False
    client = app_of(sse_keepalive_s=1).test_client()
    r = client.post("/v1/chat/completions", json={**CHAT, "stream": True}, buffered=False)
    job_id = r.headers["X-Job-ID"]
    first = next(iter(r.response))
    assert b"chat.completion.chunk" in first
    r.close()  # the client went away
    job = client.get(f"/jobs/{job_id}").get_json()
    assert job["status"] == "canceled"


def test_a_failed_job_is_an_openai_error(app_of, inline, monkeypatch):
    from inferno_jobs.errors import InferenceFailed
    import tests.unit.compat_fixtures as fx

    monkeypatch.setattr(fx, "fake_run", lambda model, inputs: [InferenceFailed("boom")] * len(inputs))
    r = app_of().test_client().post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 500 and r.get_json()["error"]["message"] == "boom"


def test_presence_and_frequency_penalties_reach_the_job_input():
    from api.openai_inference import _sampling
    from inferno_jobs.batchfile import Limits, Reader
    from inferno_jobs.job import JobType

    assert _sampling({"presence_penalty": 0.5, "frequency_penalty": -0.25, "temperature": None}) == \
        {"presence_penalty": 0.5, "frequency_penalty": -0.25}
    # A /v1/batches line passes them to its job as well.
    line = Reader(JobType.COMPLETION, limits=Limits(10**6, 10, 10**5)).request(1, {
        "custom_id": "a", "method": "POST", "url": "/v1/completions",
        "body": {"model": "tiny-gpt", "prompt": "Once", "presence_penalty": 0.5, "frequency_penalty": 1}})
    assert line.ok, line.error
    assert (line.input["presence_penalty"], line.input["frequency_penalty"]) == (0.5, 1)

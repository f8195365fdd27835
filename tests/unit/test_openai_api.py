"""The OpenAI-compatible surface on fakeredis: response and chunk shapes, jobs on the high queue, seed 003's
validation table in OpenAI's error shape, the sync wait's 504, and cancel on disconnect."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest

from tests.unit.compat_fixtures import (TOKENS, TOO_LONG, app_of, compat_models, fake_entry,  # noqa: F401
                                       inline, sse_events)

CHAT = {"model": "tiny-gpt", "messages": [{"role": "user", "content": "Hello!"}]}


@pytest.fixture
def v1(app_of):
    return app_of().test_client()


def test_chat_completion_is_a_high_priority_job_with_openai_shape(v1, inline):
    r = v1.post("/v1/chat/completions", json={**CHAT, "temperature": 0.7, "max_tokens": 20})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny-gpt"
    # as OpenAI's, and as a batch output line's (api/openai_results.py)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "".join(TOKENS), "refusal": None}
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


def test_a_stream_that_fails_before_its_first_piece_answers_the_error_status(v1, inline):
    r = v1.post("/v1/completions", json={"model": "tiny-gpt", "prompt": TOO_LONG, "stream": True})
    assert r.status_code == 400 and r.mimetype == "application/json"
    error = r.get_json()["error"]
    assert error["code"] == "context_length_exceeded" and "context holds 256" in error["message"]
    job = v1.get(f"/jobs/{r.headers['X-Job-ID']}").get_json()
    assert job["status"] == "failed"
    chat = v1.post("/v1/chat/completions", json={**CHAT, "stream": True})  # and one that starts still streams
    assert chat.status_code == 200 and sse_events(chat)[-1] == "[DONE]"


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
    ("/v1/embeddings", {"model": "minilm", "input": [[9906, 1917]]}, 400, "check_embedding_ctx_length=False",
     "input"),
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


def test_a_stream_that_ends_in_an_error_still_ends_in_done(app_of, inline):
    inline.run = False  # queued past the first keepalive tick: the stream has started, then goes silent too long
    client = app_of(sync_wait_s=2, sse_keepalive_s=1).test_client()
    r = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 200
    events = sse_events(r)
    assert "sent nothing for 2 s" in events[-2]["error"]["message"] and events[-1] == "[DONE]"


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
    from inferno_jobs.openai_request import sampling as _sampling
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


def _input_of(inline, job_id: str) -> dict:
    return inline.store.get(job_id).input


def test_null_means_the_default_for_every_optional_parameter(v1, inline):
    nulls = {"stream": None, "temperature": None, "top_p": None, "max_tokens": None, "stop": None, "seed": None,
             "n": None, "presence_penalty": None, "frequency_penalty": None, "logit_bias": None, "user": None,
             "stream_options": None, "store": None, "metadata": None, "service_tier": None, "top_k": None,
             "repetition_penalty": None, "chat_template_kwargs": None}
    chat = v1.post("/v1/chat/completions", json={**CHAT, **nulls, "max_completion_tokens": None, "logprobs": None,
                                                 "top_logprobs": None, "response_format": None,
                                                 "parallel_tool_calls": None})
    assert chat.status_code == 200, chat.get_json()
    assert chat.get_json()["object"] == "chat.completion"  # stream: null is no stream
    completion = v1.post("/v1/completions", json={"model": "tiny-gpt", "prompt": "Once", **nulls, "echo": None,
                                                  "suffix": None, "best_of": None, "logprobs": None})
    assert completion.status_code == 200, completion.get_json()
    embedding = v1.post("/v1/embeddings", json={"model": "minilm", "input": "a", "encoding_format": None,
                                                "dimensions": None, "user": None})
    assert embedding.status_code == 200 and embedding.get_json()["data"][0]["embedding"] == [0.5] * 4
    missing = v1.post("/v1/chat/completions", json={**CHAT, "model": None}).get_json()["error"]
    assert missing["message"] == "model is required" and missing["param"] == "model"


def test_standard_parameters_without_effect_are_accepted_and_ignored(v1, inline):
    ignored = {"store": True, "metadata": {"k": "v"}, "user": "u1", "service_tier": "auto",
               "parallel_tool_calls": False}
    r = v1.post("/v1/chat/completions", json={**CHAT, **ignored})
    assert r.status_code == 200, r.get_json()
    assert _input_of(inline, r.get_json()["id"]) == {"messages": CHAT["messages"]}  # nothing of them reaches the job
    tier = v1.post("/v1/chat/completions", json={**CHAT, "service_tier": "fastest"}).get_json()["error"]
    assert tier["param"] == "service_tier"
    # The same body is a valid batch line (docs/batches.md), validated by the same schema.
    from inferno_jobs.batchfile import Limits, Reader
    from inferno_jobs.job import JobType

    line = Reader(JobType.CHAT, limits=Limits(10**6, 10, 10**5)).request(1, {
        "custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {**CHAT, **ignored}})
    assert line.ok, line.error


def test_top_k_repetition_penalty_and_chat_template_kwargs_reach_the_job(v1, inline):
    extra = {"top_k": 50, "repetition_penalty": 1.1, "chat_template_kwargs": {"enable_thinking": False}}
    r = v1.post("/v1/chat/completions", json={**CHAT, **extra})
    assert r.status_code == 200, r.get_json()
    assert _input_of(inline, r.get_json()["id"]) == {"messages": CHAT["messages"], **extra}
    r = v1.post("/v1/completions", json={"model": "tiny-gpt", "prompt": "Once", "top_k": -1,
                                         "repetition_penalty": 1.0, "chat_template_kwargs": {}})
    assert r.status_code == 200, r.get_json()
    assert _input_of(inline, r.get_json()["id"]) == {"prompt": "Once", "top_k": 0, "repetition_penalty": 1.0}
    # A completion has no chat template: a keyword for one would be ignored, so it is refused.
    refused = v1.post("/v1/completions", json={"model": "tiny-gpt", "prompt": "Once",
                                               "chat_template_kwargs": {"enable_thinking": False}})
    assert refused.status_code == 400 and refused.get_json()["error"]["param"] == "chat_template_kwargs"
    bad = v1.post("/v1/chat/completions", json={**CHAT, "repetition_penalty": 0}).get_json()["error"]
    assert bad["param"] == "repetition_penalty"


def test_chat_and_completions_answer_without_the_version(v1, inline):
    chat = v1.post("/chat/completions", json=CHAT)
    assert chat.status_code == 200 and chat.get_json()["object"] == "chat.completion"
    completion = v1.post("/completions", json={"model": "tiny-gpt", "prompt": "Once"})
    assert completion.status_code == 200 and completion.get_json()["object"] == "text_completion"
    error = v1.post("/chat/completions", json={**CHAT, "temperature": 3}).get_json()["error"]  # OpenAI's shape
    assert error["param"] == "temperature" and error["type"] == "invalid_request_error"
    assert v1.post("/embeddings", json={"model": "minilm", "input": "a"}).status_code == 200  # the seeds' own route
    from api.ratelimit import rate_limited

    assert rate_limited("POST", "/chat/completions") and rate_limited("POST", "/completions")  # counted as /v1


def test_a_model_of_the_wrong_type_is_a_bad_model(v1, inline):
    embeddings = v1.post("/v1/embeddings", json={"model": "tiny-gpt", "input": "a"}).get_json()["error"]
    assert embeddings["param"] == "model" and "is a completion model" in embeddings["message"]
    chat = v1.post("/v1/chat/completions", json={**CHAT, "model": "minilm"}).get_json()["error"]
    assert chat["param"] == "model" and "'minilm' is an embedding model" in chat["message"]


def _upload(v1, data: bytes = b'{"prompt": "x"}\n', **form):
    return v1.post("/v1/files", data={"file": (io.BytesIO(data), "in.jsonl"), "purpose": "batch", **form},
                   content_type="multipart/form-data")


def test_files_expire_after_what_the_upload_asks(v1):
    file = _upload(v1, **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}).get_json()
    assert file["expires_at"] - file["created_at"] == 3600
    default = _upload(v1).get_json()
    assert default["expires_at"] - default["created_at"] == 7 * 24 * 3600  # INFERNO_FILE_RETENTION_S
    for form, param in [({"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"},
                         "expires_after.anchor"),
                        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"},
                         "expires_after.seconds"),
                        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": str(8 * 24 * 3600)},
                         "expires_after.seconds")]:
        r = _upload(v1, **form)
        assert r.status_code == 400 and r.get_json()["error"]["param"] == param, (form, r.get_json())


def test_files_list_in_either_order(v1):
    ids = [_upload(v1).get_json()["id"] for _ in range(3)]
    assert [f["id"] for f in v1.get("/v1/files").get_json()["data"]] == ids[::-1]
    assert [f["id"] for f in v1.get("/v1/files?order=desc").get_json()["data"]] == ids[::-1]
    asc = v1.get("/v1/files?order=asc&limit=2").get_json()
    assert [f["id"] for f in asc["data"]] == ids[:2] and asc["has_more"]
    rest = v1.get(f"/v1/files?order=asc&after={ids[1]}").get_json()
    assert [f["id"] for f in rest["data"]] == ids[2:] and not rest["has_more"]
    bogus = v1.get("/v1/files?order=bogus")
    assert bogus.status_code == 400
    assert bogus.get_json()["error"]["param"] == "order"
    assert bogus.get_json()["error"]["type"] == "invalid_request_error"


def test_a_new_batch_is_in_progress_since_it_was_accepted(v1, inline):
    line = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"model": "tiny-gpt", "prompt": "x"}}
    file = _upload(v1, (json.dumps(line) + "\n").encode()).get_json()
    batch = v1.post("/v1/batches", json={"input_file_id": file["id"], "endpoint": "/v1/completions",
                                         "completion_window": "24h"}).get_json()
    assert batch["status"] == "in_progress"
    assert batch["in_progress_at"] is not None and batch["in_progress_at"] >= batch["created_at"]
    assert v1.get(f"/v1/batches/{batch['id']}").get_json()["in_progress_at"] == batch["in_progress_at"]


def test_n_choices_for_chat_and_for_each_prompt_of_a_completion(v1, inline):
    chat = v1.post("/v1/chat/completions", json={**CHAT, "n": 2, "seed": 4}).get_json()
    assert [(c["index"], c["message"]["content"]) for c in chat["choices"]] == [(0, "chat/0"), (1, "chat/1")]
    assert chat["usage"] == {"prompt_tokens": 2, "completion_tokens": 8, "total_tokens": 10}
    job = inline.store.get(chat["id"])
    assert job.input["n"] == 2 and job.input["seed"] == 4  # one job; the worker samples seed + j
    r = v1.post("/v1/completions", json={"model": "tiny-gpt", "prompt": ["a", "b"], "n": 2, "best_of": 2})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    # prompt i's choice j is choice i * n + j
    assert [(c["index"], c["text"]) for c in body["choices"]] == [(0, "a/0"), (1, "a/1"), (2, "b/0"), (3, "b/1")]
    assert body["usage"]["completion_tokens"] == 16 and len(r.headers["X-Job-ID"].split(",")) == 2


@pytest.mark.parametrize("path, extra, message, param", [
    ("/v1/chat/completions", {"n": 2, "stream": True}, "n > 1 cannot stream", "n"),
    ("/v1/chat/completions", {"n": 0}, "n must be between 1 and 128", "n"),
    ("/v1/chat/completions", {"n": 129}, "n must be between 1 and 128", "n"),
    ("/v1/completions", {"prompt": ["a"] * 16, "n": 9}, "n times the number of prompts must be at most 128", "n"),
    ("/v1/completions", {"prompt": "a", "n": 2, "best_of": 3}, "best_of must equal n", "best_of"),
])
def test_a_bad_n_is_400_naming_its_parameter(v1, inline, path, extra, message, param):
    body = {**CHAT, **extra} if "chat" in path else {"model": "tiny-gpt", **extra}
    r = v1.post(path, json=body)
    assert r.status_code == 400 and message in r.get_json()["error"]["message"]
    assert r.get_json()["error"]["param"] == param
    assert not inline.sent  # nothing was queued


def test_a_reply_sent_back_as_the_client_returned_it_continues_the_chat(v1, inline):
    first = v1.post("/v1/chat/completions", json=CHAT).get_json()["choices"][0]["message"]
    # As openai's ChatCompletionMessage.model_dump() gives it: every optional field, null or empty.
    reply = {**first, "annotations": [], "audio": None, "function_call": None, "tool_calls": None}
    turn = [*CHAT["messages"], reply, {"role": "developer", "content": [{"type": "text", "text": "More"}]}]
    r = v1.post("/v1/chat/completions", json={**CHAT, "messages": turn})
    assert r.status_code == 200, r.get_json()
    stored = inline.store.get(r.get_json()["id"]).input["messages"]
    assert stored[1] == {"role": "assistant", "content": "".join(TOKENS)}
    assert stored[2] == {"role": "system", "content": "More"}
    refused = {"role": "assistant", "content": None, "refusal": "I cannot."}  # a refusal: its text is the turn
    r = v1.post("/v1/chat/completions", json={**CHAT, "messages": [*CHAT["messages"], refused]})
    assert r.status_code == 200 and inline.store.get(r.get_json()["id"]).input["messages"][1]["content"] == "I cannot."


@pytest.mark.parametrize("extra, message, param", [
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function"}]}]},
     "this server calls no tools", "messages.0.tool_calls"),
    ({"messages": [{"role": "user", "content": []}]}, "a non-empty list of text parts", "messages.0.content"),
    ({"stream": "yes"}, "Not a valid boolean", "stream"),
    ({"stream": 1}, "Not a valid boolean", "stream"),
    ({"logprobs": "true"}, "Not a valid boolean", "logprobs"),
    ({"stream_options": {"include_usage": True}}, "only allowed when 'stream' is enabled", "stream_options"),
])
def test_what_openai_refuses_is_400_naming_its_parameter(v1, inline, extra, message, param):
    r = v1.post("/v1/chat/completions", json={**CHAT, **extra})
    assert r.status_code == 400 and message in r.get_json()["error"]["message"], r.get_json()
    assert r.get_json()["error"]["param"] == param
    assert not inline.sent


# -- logprobs ----------------------------------------------------------------------------------------------------

def test_chat_logprobs_in_openai_shape_and_null_unless_asked(v1, inline):
    body = v1.post("/v1/chat/completions", json={**CHAT, "logprobs": True, "top_logprobs": 2}).get_json()
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs == {"content": [fake_entry(i, t, 2) for i, t in enumerate(TOKENS)], "refusal": None}
    first = logprobs["content"][0]
    assert set(first) == {"token", "logprob", "bytes", "top_logprobs"} and first["bytes"] == list(b"Once")
    assert set(first["top_logprobs"][0]) == {"token", "logprob", "bytes"}
    assert _input_of(inline, body["id"]) == {"messages": CHAT["messages"], "logprobs": True, "top_logprobs": 2}
    # logprobs alone lists no alternatives; not asked, the choice says null and the job computes nothing
    alone = v1.post("/v1/chat/completions", json={**CHAT, "logprobs": True}).get_json()
    assert all(e["top_logprobs"] == [] for e in alone["choices"][0]["logprobs"]["content"])
    plain = v1.post("/v1/chat/completions", json={**CHAT, "logprobs": False}).get_json()
    assert plain["choices"][0]["logprobs"] is None
    assert _input_of(inline, plain["id"]) == {"messages": CHAT["messages"]}


def test_chat_stream_chunks_carry_the_entries_of_their_own_delta(v1):
    events = sse_events(v1.post("/v1/chat/completions", json={**CHAT, "stream": True, "logprobs": True,
                                                              "top_logprobs": 1}))
    chunks = [c["choices"][0] for c in events[:-1]]
    assert chunks[0]["delta"] == {"role": "assistant", "content": ""} and chunks[0]["logprobs"] is None
    pieces = [c for c in chunks if c["delta"].get("content")]
    assert [c["delta"]["content"] for c in pieces] == TOKENS
    assert [c["logprobs"] for c in pieces] == [{"content": [fake_entry(i, t, 1)], "refusal": None}
                                               for i, t in enumerate(TOKENS)]
    assert chunks[-1]["finish_reason"] == "stop" and chunks[-1]["logprobs"] is None
    plain = sse_events(v1.post("/v1/chat/completions", json={**CHAT, "stream": True}))
    assert all(c["choices"][0]["logprobs"] is None for c in plain[:-1])


def test_completions_logprobs_in_the_legacy_shape(v1, inline):
    r = v1.post("/v1/completions", json={"model": "tiny-gpt", "prompt": "Once", "logprobs": 2})
    assert r.status_code == 200, r.get_json()
    logprobs = r.get_json()["choices"][0]["logprobs"]
    assert logprobs["tokens"] == TOKENS
    assert logprobs["token_logprobs"] == [fake_entry(i, t, 0)["logprob"] for i, t in enumerate(TOKENS)]
    assert logprobs["text_offset"] == [4, 8, 13, 15]  # characters from the prompt's start, as OpenAI counts
    two = v1.post("/v1/completions", json={"model": "tiny-gpt", "prompt": ["Once", "Hé there"], "n": 2,
                                           "logprobs": 1}).get_json()
    assert [c["logprobs"]["text_offset"][0] for c in two["choices"]] == [4, 4, 8, 8]  # each after its own prompt
    # the alternatives as {token: logprob}, most likely first, the chosen token among them
    assert logprobs["top_logprobs"][1] == {" upon": -0.2, " the": pytest.approx(-1.2)}
    assert list(logprobs["top_logprobs"][1].values()) == sorted(logprobs["top_logprobs"][1].values(), reverse=True)
    assert _input_of(inline, r.get_json()["id"]) == {"prompt": "Once", "logprobs": True, "top_logprobs": 2}
    # logprobs: 0 is the chosen tokens' own log probabilities
    zero = v1.post("/v1/completions", json={"model": "tiny-gpt", "prompt": "Once", "logprobs": 0}).get_json()
    assert zero["choices"][0]["logprobs"]["top_logprobs"] == [{t: fake_entry(i, t, 0)["logprob"]}
                                                              for i, t in enumerate(TOKENS)]
    plain = v1.post("/v1/completions", json={"model": "tiny-gpt", "prompt": "Once"}).get_json()
    assert plain["choices"][0]["logprobs"] is None


def test_completions_stream_logprobs_count_offsets_across_chunks(v1):
    events = sse_events(v1.post("/v1/completions", json={"model": "tiny-gpt", "prompt": "Once", "stream": True,
                                                         "logprobs": 1}))
    pieces = [c["choices"][0] for c in events[:-1] if c["choices"][0]["text"]]
    assert [p["logprobs"]["tokens"] for p in pieces] == [[t] for t in TOKENS]
    assert [p["logprobs"]["text_offset"] for p in pieces] == [[4], [8], [13], [15]]
    assert events[-2]["choices"][0]["logprobs"] is None  # the finish chunk


def test_each_of_n_choices_has_its_own_logprobs(v1):
    chat = v1.post("/v1/chat/completions", json={**CHAT, "n": 2, "logprobs": True}).get_json()
    assert [[e["token"] for e in c["logprobs"]["content"]] for c in chat["choices"]] == [list("chat/0"),
                                                                                       list("chat/1")]
    completion = v1.post("/v1/completions", json={"model": "tiny-gpt", "prompt": ["a", "b"], "n": 2,
                                                  "logprobs": 1}).get_json()
    assert ["".join(c["logprobs"]["tokens"]) for c in completion["choices"]] == ["a/0", "a/1", "b/0", "b/1"]


@pytest.mark.parametrize("path, extra, message, param", [
    ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs needs logprobs: true", "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": False, "top_logprobs": 0}, "top_logprobs needs logprobs", "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs must be between 0 and 20",
     "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": -1}, "top_logprobs must be between 0 and 20",
     "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 2.5}, "Not a valid integer", "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": "maybe"}, "Not a valid boolean", "logprobs"),
    ("/v1/completions", {"logprobs": 6}, "logprobs must be between 0 and 5", "logprobs"),
    ("/v1/completions", {"logprobs": True}, "Not a valid integer", "logprobs"),
])
def test_bad_logprobs_are_400_naming_their_parameter(v1, inline, path, extra, message, param):
    body = {**CHAT, **extra} if "chat" in path else {"model": "tiny-gpt", "prompt": "Once", **extra}
    r = v1.post(path, json=body)
    assert r.status_code == 400, r.get_json()
    error = r.get_json()["error"]
    assert message in error["message"] and error["param"] == param
    assert not inline.sent  # nothing was queued


def test_native_jobs_take_logprobs_and_refuse_top_logprobs_alone(v1, inline):
    job = v1.post("/jobs", json={"type": "completion", "model": "tiny-gpt",
                                 "input": {"prompt": "Once", "logprobs": True, "top_logprobs": 3}}).get_json()
    deadline = time.monotonic() + 5
    while (done := v1.get(f"/jobs/{job['id']}").get_json())["status"] != "succeeded" and time.monotonic() < deadline:
        time.sleep(0.01)  # the inline worker runs it on a thread of its own
    assert done["result"]["logprobs"] == [fake_entry(i, t, 3) for i, t in enumerate(TOKENS)]
    for bad, field in [({"top_logprobs": 3}, "top_logprobs"), ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
                       ({"logprobs": "sometimes"}, "logprobs")]:
        r = v1.post("/jobs", json={"type": "chat", "model": "tiny-gpt", "input": {"messages": CHAT["messages"], **bad}})
        assert r.status_code == 400 and field in json.dumps(r.get_json()["error"]["details"]), r.get_json()

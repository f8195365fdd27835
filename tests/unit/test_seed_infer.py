"""Seed 004's ``POST /v1/infer`` and ``POST /v1/infer/stream`` on fakeredis with the inline worker: its documented
request, the job it runs, the SSE events, and /v1's OpenAI error shape."""

from __future__ import annotations

import pytest

from tests.unit.compat_fixtures import TOKENS, app_of, compat_models, inline, sse_events  # noqa: F401

SEED_BODY = {"model": "tiny-gpt", "prompt": "Hello, world!", "params": {"max_new_tokens": 12, "temperature": 0.7}}


@pytest.fixture
def seed(app_of):
    return app_of().test_client()


def test_infer_answers_the_seed_request_with_a_high_priority_completion_job(seed, inline):
    r = seed.post("/v1/infer", json=SEED_BODY, headers={"Authorization": "Bearer your-token"})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["output"] == "".join(TOKENS) and body["finish_reason"] == "stop" and body["model"] == "tiny-gpt"
    assert body["usage"]["total_tokens"] == 2 + len(TOKENS) and body["latency_ms"] >= 0
    assert inline.sent[-1]["queue"] == "inferno.cpu.high"
    job = seed.get(f"/jobs/{body['id']}").get_json()
    assert job["type"] == "completion" and job["priority"] == "high" and job["status"] == "succeeded"


def test_infer_maps_params_onto_the_job_input(seed):
    body = {"model": "tiny-gpt", "prompt": "Hi", "params": {"max_new_tokens": 5, "temperature": 0, "top_p": 0.5,
                                                             "top_k": 3, "repetition_penalty": 1.2, "stop": "\n",
                                                             "seed": 7}}
    job_id = seed.post("/v1/infer", json=body).get_json()["id"]
    # The stored input is what POST /jobs would have been given.
    stored = seed.application.extensions["inferno"].store.get(job_id).input
    assert stored == {"prompt": "Hi", "max_tokens": 5, "temperature": 0, "top_p": 0.5, "top_k": 3,
                      "repetition_penalty": 1.2, "stop": ["\n"], "seed": 7}


def test_infer_accepts_the_seeds_curl_body_without_a_json_content_type(seed):
    r = seed.post("/v1/infer", data='{"model":"tiny-gpt","prompt":"Hello","params":{}}',
                  content_type="application/x-www-form-urlencoded")
    assert r.status_code == 200 and r.get_json()["output"] == "".join(TOKENS)


def test_infer_stream_sends_each_token_then_done(seed):
    r = seed.post("/v1/infer/stream", data='{"model":"tiny-gpt","prompt":"Hello","params":{}}',
                  headers={"Accept": "text/event-stream"})
    assert r.status_code == 200 and r.mimetype == "text/event-stream" and r.headers["X-Job-ID"]
    events = sse_events(r)
    assert events[:-1] == [{"token": t, "index": i} for i, t in enumerate(TOKENS)]
    assert events[-1]["done"] is True and events[-1]["finish_reason"] == "stop"
    assert events[-1]["id"] == r.headers["X-Job-ID"]


@pytest.mark.parametrize("body, param, message", [
    ({"prompt": "Hi"}, "model", "model is required"),
    ({"model": "tiny-gpt"}, "prompt", "prompt is required"),
    ({"model": "tiny-gpt", "prompt": "Hi", "params": {"temperature": 3.0}}, "params.temperature",
     "temperature must be between 0 and 2"),
    ({"model": "tiny-gpt", "prompt": "Hi", "params": {"max_new_tokens": 0}}, "params.max_new_tokens",
     "max_new_tokens must be between 1 and 2000000"),
    ({"model": "tiny-gpt", "prompt": "Hi", "params": {"top_p": 1.5}}, "params.top_p", "top_p must be between 0 and 1"),
    ({"model": "tiny-gpt", "prompt": "Hi", "params": {"do_sample": True}}, "params.do_sample",
     "Unrecognized request argument supplied: params.do_sample"),
])
def test_infer_validation_errors_have_openais_shape(seed, body, param, message):
    for path in ("/v1/infer", "/v1/infer/stream"):
        r = seed.post(path, json=body)
        assert r.status_code == 400, (path, r.get_json())
        error = r.get_json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param and message in error["message"]


def test_infer_unknown_model_is_404_and_a_non_generation_model_400(seed):
    r = seed.post("/v1/infer", json={**SEED_BODY, "model": "gpt-4o"})
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "model_not_found"
    assert seed.post("/v1/infer", json={**SEED_BODY, "model": "iris"}).status_code == 400
    too_long = seed.post("/v1/infer", json={**SEED_BODY, "params": {"max_new_tokens": 100_000}})
    assert too_long.status_code == 400 and too_long.get_json()["error"]["code"] == "context_length_exceeded"


def test_infer_routes_are_in_the_openapi_document(seed):
    paths = seed.get("/openapi.json").get_json()["paths"]
    assert "post" in paths["/v1/infer"] and "post" in paths["/v1/infer/stream"]

"""CORS (api/cors.py) and compression (api/compression.py) through the Flask test client: preflights, the headers
a browser's script may read, the configured origins, and which responses get compressed."""

from __future__ import annotations

import gzip
import json

import brotli
import pytest

from tests.unit.compat_fixtures import app_of, compat_models, inline  # noqa: F401

ORIGIN = "https://app.example.org"


def test_any_origin_by_default_and_credentials_never(client):
    r = client.get("/health", headers={"Origin": ORIGIN})
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in r.headers
    exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"x-request-id", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after",
            "location", "x-job-id"} <= exposed


def test_a_preflight_is_answered_without_a_key_and_allows_the_auth_headers(make_app):
    client = make_app(auth="required").test_client()
    r = client.options("/jobs", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                         "Access-Control-Request-Headers": "authorization, content-type, "
                                                                           "idempotency-key, x-api-key"})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key", "x-api-key"} <= allowed
    assert int(r.headers["Access-Control-Max-Age"]) > 0
    assert client.post("/jobs", json={}, headers={"Origin": ORIGIN}).status_code == 401  # the key is still needed


def test_errors_carry_cors_headers_too(make_app):
    client = make_app(auth="required").test_client()
    r = client.get("/jobs", headers={"Origin": ORIGIN})
    assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"] == "*"


def test_configured_origins_only(make_app):
    client = make_app(cors_origins=(ORIGIN, "https://admin.example.org")).test_client()
    allowed = client.get("/health", headers={"Origin": ORIGIN})
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN and "Origin" in allowed.headers["Vary"]
    other = client.get("/health", headers={"Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = client.options("/jobs", headers={"Origin": "https://evil.example.com",
                                                 "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_no_origins_no_cors_headers(make_app):
    r = make_app(cors_origins=()).test_client().get("/health", headers={"Origin": ORIGIN})
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers


def test_the_setting_reads_a_comma_separated_list():
    from inferno_jobs.config import Settings

    assert Settings.from_env({}).cors_origins == ("*",)
    assert Settings.from_env({"INFERNO_CORS_ORIGINS": f"{ORIGIN}, https://b.example"}).cors_origins == (
        ORIGIN, "https://b.example")
    assert Settings.from_env({"INFERNO_CORS_ORIGINS": ""}).cors_origins == ()


@pytest.mark.parametrize("encoding, decode", [("gzip", gzip.decompress), ("br", brotli.decompress)])
def test_large_json_is_compressed_when_the_client_accepts_it(client, encoding, decode):
    plain = client.get("/openapi.json")
    assert len(plain.data) > 1000 and "Content-Encoding" not in plain.headers
    r = client.get("/openapi.json", headers={"Accept-Encoding": encoding})
    assert r.headers["Content-Encoding"] == encoding and "Accept-Encoding" in r.headers["Vary"]
    assert len(r.data) < len(plain.data) and json.loads(decode(r.data)) == plain.get_json()


def test_small_responses_are_not_compressed(client):
    r = client.post("/jobs", json={"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}},
                    headers={"Accept-Encoding": "gzip, deflate, br"})
    assert r.status_code == 202 and len(r.data) < 1000
    assert "Content-Encoding" not in r.headers and r.get_json()["status"] == "queued"


def test_event_streams_are_never_compressed(app_of):
    client = app_of().test_client()
    body = {"model": "tiny-gpt", "prompt": "x" * 2000, "max_tokens": 8}
    for path in ("/inference/stream", "/v1/infer/stream"):
        payload = body if path == "/inference/stream" else {"model": "tiny-gpt", "prompt": "x" * 2000, "params": {}}
        r = client.post(path, json=payload, headers={"Accept-Encoding": "gzip, deflate, br"})
        assert r.mimetype == "text/event-stream" and r.is_streamed
        assert "Content-Encoding" not in r.headers and b'"done":true' in r.data


def test_a_streamed_json_download_goes_out_as_yielded(make_app):
    from flask import Response

    app = make_app()

    @app.get("/test-chunked")
    def chunked():
        return Response((json.dumps({"line": i, "pad": "x" * 200}) + "\n" for i in range(20)),
                        mimetype="application/json")

    r = app.test_client().get("/test-chunked", headers={"Accept-Encoding": "gzip, br"})
    assert r.is_streamed and "Content-Encoding" not in r.headers
    assert [json.loads(line)["line"] for line in r.data.splitlines()] == list(range(20))

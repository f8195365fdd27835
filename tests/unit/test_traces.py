"""GET /traces: with INFERNO_TRACING=on the API's spans are recorded into Redis and listed newest first, with
filters; with tracing off the route is 404 naming the setting; a Redis failure loses spans, never a request."""

from __future__ import annotations

import fakeredis
import pytest

from inferno_jobs.keyspace import Keyspace
from inferno_jobs.spans import SpanLog, SpanRecorder

pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra is not installed")

from inferno_jobs import tracing  # noqa: E402

IRIS = {"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}}


@pytest.fixture
def traced(make_app):
    client = make_app(tracing="on").test_client()

    def traces(query: str = "") -> list[dict]:
        tracing.flush()
        response = client.get(f"/traces{query}")
        assert response.status_code == 200, response.json
        return response.json["traces"]
    return client, traces


def test_requests_become_spans_listed_newest_first(traced):
    client, traces = traced
    job = client.post("/jobs", json=IRIS).json
    assert client.get(f"/jobs/{job['id']}").status_code == 200
    client.get("/metrics")  # scrapes are not recorded
    spans = traces()
    names = [s["operation_name"] for s in spans]
    assert names[:2] == ["GET /jobs/<job_id>", "POST /jobs"], names
    newest = spans[0]
    assert len(newest["trace_id"]) == 32 and len(newest["span_id"]) == 16
    assert newest["status"] == "ok" and newest["duration_ms"] >= 0 and newest["start_time"].endswith("Z")
    assert newest["component"] == "api" and newest["kind"] == "server"
    assert not any("/metrics" in name for name in names)


def test_filters_by_trace_operation_and_limit(traced):
    client, traces = traced
    client.post("/jobs", json=IRIS)
    client.get("/jobs")
    listed = traces("?operation=post /jobs")
    assert listed and all(s["operation_name"] == "POST /jobs" for s in listed)
    trace_id = listed[0]["trace_id"]
    assert {s["trace_id"] for s in traces(f"?trace_id={trace_id}")} == {trace_id}
    assert len(traces("?limit=1")) == 1
    assert traces("?operation=no-such-operation") == []
    assert client.get("/traces?limit=0").status_code == 400
    assert client.get("/traces?trace_id=xyz").status_code == 400


def test_traces_are_404_while_tracing_is_off(client):
    response = client.get("/traces")
    assert response.status_code == 404
    assert "INFERNO_TRACING" in response.json["error"]["message"]


def test_a_redis_failure_loses_spans_but_never_fails_anything():
    server = fakeredis.FakeServer()
    broken = fakeredis.FakeRedis(server=server)
    server.connected = False
    recorder = SpanRecorder(SpanLog(broken, Keyspace("x"), 10))
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExportResult

    span = TracerProvider().get_tracer("t").start_span("work")
    span.end()
    assert recorder.export([span]) is SpanExportResult.FAILURE
    server.connected = True
    assert recorder.export([span]) is SpanExportResult.SUCCESS
    assert SpanLog(broken, Keyspace("x"), 10).recent(5)[0]["operation_name"] == "work"


def test_the_log_keeps_only_the_newest_spans(fake_redis):
    span_log = SpanLog(fake_redis, Keyspace("x"), kept=3)
    span_log.append([{"trace_id": "0" * 32, "operation_name": f"op{i}"} for i in range(5)])
    assert [s["operation_name"] for s in span_log.recent(10)] == ["op4", "op3", "op2"]

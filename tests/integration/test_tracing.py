"""OpenTelemetry (the ``otel`` extra): one trace follows a job from ``POST /jobs`` in a real API server through the
Celery message to the worker that runs it, exported over OTLP/HTTP to a receiver in the test and listed on
GET /traces."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from inferno_jobs.config import Settings
from inferno_jobs.redis_server import free_port
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.integration
trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2",
                                    reason="the otel extra is not installed")


class Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace endpoint that keeps every span it is sent."""

    spans: list = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = trace_service.ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    Receiver.spans.append((attributes.get("inferno.component"), span.name, span.trace_id.hex()))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_one_trace_from_the_api_through_celery_to_the_worker(redis_server, model_dir, live_redis, start_worker):
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{receiver.server_port}"
    settings = Settings.from_env({}, redis_url=redis_server.url, model_dir=model_dir, auth="disabled",
                                 key_prefix="traced", reconcile_interval_s=1, otel_endpoint=endpoint)
    env = {**os.environ, **settings.env(), "PYTHONPATH": str(ROOT), "OTEL_BSP_SCHEDULE_DELAY": "200"}
    port = free_port()
    api = subprocess.Popen([sys.executable, "-m", "inferno_jobs.cli", "api", "--port", str(port), "--workers", "1"],
                           env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"

        def up():
            try:
                return requests.get(f"{base}/health", timeout=5).status_code == 200
            except requests.RequestException:
                return False
        wait_for(up, 90, 0.2)
        start_worker(settings, extra_env={"OTEL_BSP_SCHEDULE_DELAY": "200"})
        job = requests.post(f"{base}/jobs", json={"type": "predict", "model": "iris",
                                                   "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}}, timeout=10).json()
        wait_for(lambda: requests.get(f"{base}/jobs/{job['id']}", timeout=5).json()["status"] == "succeeded", 60)

        def traced():
            api_traces = {t for component, name, t in Receiver.spans if component == "api" and "jobs" in name}
            worker_traces = {t for component, name, t in Receiver.spans
                             if component == "worker" and "inferno.run_job" in name}
            return api_traces & worker_traces
        assert wait_for(traced, 30, 0.2), Receiver.spans

        # The same spans are summarised in Redis for GET /traces, the worker's included, one trace across both.
        def listed():
            spans = requests.get(f"{base}/traces", params={"limit": 1000}, timeout=5).json()["traces"]
            return ({s["trace_id"] for s in spans if s["component"] == "api" and "jobs" in s["operation_name"]}
                    & {s["trace_id"] for s in spans if s["component"] == "worker"
                       and "inferno.run_job" in s["operation_name"]})
        trace_id = next(iter(wait_for(listed, 30, 0.2)))
        one_trace = requests.get(f"{base}/traces", params={"trace_id": trace_id}, timeout=5).json()["traces"]
        assert {s["component"] for s in one_trace} == {"api", "worker"}
    finally:
        api.terminate()
        api.wait(timeout=30)
        receiver.shutdown()

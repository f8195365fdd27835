"""Inbound signed webhooks, real end to end: a sender signs with ``standardwebhooks`` and POSTs over a real socket;
the job runs on a real Celery worker with the iris ONNX model and is read back with the source tenant's API key."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from datetime import datetime, timezone

import numpy as np
import pytest
import requests
from standardwebhooks import Webhook

from api import create_app
from inferno_jobs.apikey import KeyRing
from inferno_jobs.demo.tabular import reference
from inferno_jobs.ingest import SourceRegistry
from tests.conftest import wait_for
from tests.integration.live_server import LiveServer

pytestmark = pytest.mark.integration


def test_a_signed_event_becomes_a_job_that_succeeds_and_its_replay_is_refused(live_settings, live_redis,
                                                                                start_worker):
    settings = dataclasses.replace(live_settings, auth="required")
    key, record, _ = KeyRing(live_redis, settings).create("crm owner")
    source = SourceRegistry(live_redis, settings).create("crm", record.tenant, {"model": "iris", "type": "predict"})
    server = LiveServer(create_app(settings, redis_client=live_redis))
    try:
        start_worker(settings)
        iris_model, iris = reference("iris")
        rows = iris.data[::25].tolist()
        body = json.dumps({"type": "job.create", "data": {"input": {"features": rows}}})
        msg_id, at = f"msg_{uuid.uuid4().hex}", datetime.now(tz=timezone.utc)
        headers = {"content-type": "application/json", "webhook-id": msg_id,
                   "webhook-timestamp": str(int(at.timestamp())),
                   "webhook-signature": Webhook(source.secret).sign(msg_id, at, body)}

        r = requests.post(f"{server.url}/webhooks/ingest/crm", data=body, headers=headers, timeout=10)
        assert r.status_code == 202, r.text
        job_id = r.json()["job"]["id"]

        def done():
            job = requests.get(f"{server.url}/jobs/{job_id}", headers={"X-API-Key": key}, timeout=10).json()
            return job if job["status"] not in ("queued", "running") else None
        job = wait_for(done, 60)
        assert job["status"] == "succeeded" and job["metadata"]["ingest_webhook_id"] == msg_id
        assert job["result"]["predictions"] == iris_model.predict(np.asarray(rows, dtype=np.float32)).tolist()

        # The sender retries (its response was lost): a fresh timestamp, the same webhook-id -> no second job.
        later = datetime.fromtimestamp(int(time.time()) + 1, tz=timezone.utc)
        retry = {**headers, "webhook-timestamp": str(int(later.timestamp())),
                 "webhook-signature": Webhook(source.secret).sign(msg_id, later, body)}
        replay = requests.post(f"{server.url}/webhooks/ingest/crm", data=body, headers=retry, timeout=10)
        assert replay.status_code == 409 and replay.json()["error"]["details"]["job_id"] == job_id
        forged = requests.post(f"{server.url}/webhooks/ingest/crm", data=body.replace("job.create", "job.create "),
                               headers=headers, timeout=10)
        assert forged.status_code == 401
        jobs = requests.get(f"{server.url}/jobs", headers={"X-API-Key": key}, timeout=10).json()["data"]
        assert [j["id"] for j in jobs] == [job_id]
    finally:
        server.close()

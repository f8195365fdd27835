"""A stream whose job's events cannot be read (Redis unreachable) ends with an error its client can read, not a
dropped connection; the job itself is untouched."""

import json

import redis

from inferno_jobs.events import JobEvents

IRIS = {"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}}


def test_an_event_stream_ends_with_an_error_event_when_redis_fails(client, monkeypatch):
    job = client.post("/jobs", json=IRIS).get_json()

    def unreachable(self, positions, block_ms):
        raise redis.exceptions.ConnectionError("Error 111 connecting to redis:6379. Connection refused.")
    monkeypatch.setattr(JobEvents, "read", unreachable)
    r = client.get(f"/jobs/{job['id']}/events")
    assert r.status_code == 200  # the stream had begun
    text = r.get_data(as_text=True)
    event, data = text.strip().split("\n")[-2:]
    assert event == "event: error"
    error = json.loads(data.removeprefix("data: "))
    assert error["code"] == "INTERNAL_ERROR" and error["details"] == {"job_id": job["id"]}
    assert "ConnectionError" in error["message"] and f"GET /jobs/{job['id']}" in error["message"]
    monkeypatch.undo()
    assert client.get(f"/jobs/{job['id']}").get_json()["status"] == "queued"

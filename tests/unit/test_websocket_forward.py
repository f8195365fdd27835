"""``WS /ws``: a failure while following a job's events reaches the client as an ``error`` message."""

import json

import redis

from api import websocket
from inferno_jobs.job import Job, JobType


class RecordingSocket:
    def __init__(self):
        self.sent = []

    def send(self, text):
        self.sent.append(json.loads(text))


def test_a_failure_while_following_a_job_is_sent_to_the_client(make_app, monkeypatch):
    app = make_app()

    def broken(job):
        raise redis.exceptions.ConnectionError("Redis went away")
        yield  # a generator, as stream_tokens is
    monkeypatch.setattr(websocket, "stream_tokens", broken)
    job = Job.create(type=JobType.COMPLETION, model="tiny-gpt", tenant="local", input={"prompt": "x"})
    with app.app_context():
        session = websocket.Session(RecordingSocket(), app)
        session.jobs["r1"] = job.id
        session.forward("r1", job, stream=True)
    (message,) = session.ws.sent
    assert message["type"] == "error" and message["id"] == "r1" and message["code"] == "MODEL_NOT_LOADED"
    assert message["details"] == {"job_id": job.id} and job.id in message["message"]
    assert "Redis" in message["message"] and message["retry_after_s"] == 5
    assert "r1" not in session.jobs


def test_a_bug_while_following_a_job_is_an_internal_error_for_the_client(make_app, monkeypatch):
    app = make_app()

    def broken(job):
        raise KeyError("result")
        yield
    monkeypatch.setattr(websocket, "stream_tokens", broken)
    job = Job.create(type=JobType.COMPLETION, model="tiny-gpt", tenant="local", input={"prompt": "x"})
    with app.app_context():
        session = websocket.Session(RecordingSocket(), app)
        session.forward("r1", job, stream=True)
    (message,) = session.ws.sent
    assert message["code"] == "INTERNAL_ERROR" and message["details"] == {"job_id": job.id}

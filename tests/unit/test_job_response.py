"""``Job.to_api`` is the contract's job object exactly as ``JobResponse`` documents it: the API answers with it
directly (api/jobs.py:job_body), so dumping it through the schema must change nothing, in every state."""

import pytest

from inferno_jobs.errors import InferenceFailed
from inferno_jobs.job import Job, JobStatus, JobType, Priority, transition
from inferno_jobs.schemas import JobResponse, shared


def _job(**kw) -> Job:
    return Job.create(type=JobType.EMBEDDING, model="minilm", tenant="t", input={"input": "hi"}, **kw)


def _queued():
    return _job(priority=Priority.HIGH, metadata={"user": "u1", "tags": ["a", "b"]}, batch_id="batch_1")


def _running():
    job = _job()
    transition(job, JobStatus.RUNNING, at=10.0, worker="host:1")
    job.cancel_requested = True
    return job


def _succeeded():
    job = _job()
    transition(job, JobStatus.RUNNING, at=10.0, worker="host:1")
    transition(job, JobStatus.SUCCEEDED, at=10.25, result={"embedding": [0.1, -0.2, 0.3], "dimensions": 3})
    return job


def _failed_after_takeover():
    job = _job()
    transition(job, JobStatus.RUNNING, at=1.0, worker="a:1")
    transition(job, JobStatus.RUNNING, at=5.0, worker="a:2")
    transition(job, JobStatus.FAILED, at=6.0,
               error=InferenceFailed("the model failed", details={"field": "input"}).to_dict())
    return job


def _canceled():
    job = _job()
    transition(job, JobStatus.CANCELED, at=2.0, error={"code": "CANCELED", "message": "canceled by request"})
    return job


@pytest.mark.parametrize("make", [_queued, _running, _succeeded, _failed_after_takeover, _canceled])
def test_the_schema_leaves_the_job_object_unchanged(make):
    job = make()
    api = job.to_api(queue_position=4)
    assert shared(JobResponse).dump(api) == api
    assert set(api) == set(JobResponse().fields)

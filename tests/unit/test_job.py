"""The job record and its state machine."""

import time

import pytest

from inferno_jobs.errors import IllegalTransition
from inferno_jobs.job import TERMINAL, TRANSITIONS, Job, JobStatus, JobType, Priority, isoformat, new_id, transition


def make_job(**kw) -> Job:
    return Job.create(type=JobType.PREDICT, model="iris", tenant="t", input={"features": [[1, 2, 3, 4]]}, **kw)


def test_ids_are_prefixed_unique_and_sort_by_creation_time():
    ids = [new_id("job") for _ in range(200)]
    assert all(i.startswith("job_") and len(i) == 30 for i in ids)
    assert len(set(ids)) == 200
    first = new_id("job")
    import time
    time.sleep(0.002)
    assert new_id("job") > first


def test_happy_path_records_one_attempt_and_timestamps():
    job = make_job()
    transition(job, JobStatus.RUNNING, at=10.0, worker="h:1")
    transition(job, JobStatus.SUCCEEDED, at=12.5, result={"predictions": [0]})
    assert job.status is JobStatus.SUCCEEDED
    assert job.started_at == 10.0 and job.finished_at == 12.5
    assert len(job.attempts) == 1 and job.attempts[0].outcome == "succeeded"
    assert job.result == {"predictions": [0]}


@pytest.mark.parametrize("terminal", sorted(TERMINAL, key=lambda s: s.value))
@pytest.mark.parametrize("target", list(JobStatus))
def test_terminal_states_never_change(terminal, target):
    job = make_job()
    job.status = terminal
    with pytest.raises(IllegalTransition):
        transition(job, target)


@pytest.mark.parametrize("target", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMED_OUT])
def test_a_queued_job_cannot_finish_without_running(target):
    with pytest.raises(IllegalTransition):
        transition(make_job(), target)


def test_the_contract_lifecycle_is_the_transition_table():
    assert TRANSITIONS[JobStatus.QUEUED] == {JobStatus.RUNNING, JobStatus.EXPIRED, JobStatus.CANCELED}
    assert TRANSITIONS[JobStatus.RUNNING] >= {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED,
                                              JobStatus.TIMED_OUT}
    assert JobStatus.EXPIRED not in TRANSITIONS[JobStatus.RUNNING]


def test_takeover_closes_the_lost_attempt_and_starts_another():
    job = make_job()
    transition(job, JobStatus.RUNNING, at=1.0, worker="a:1")
    transition(job, JobStatus.RUNNING, at=5.0, worker="a:2")
    assert [a.outcome for a in job.attempts] == ["worker_lost", None]
    assert job.started_at == 1.0
    assert job.to_api()["attempts"] == 2


def test_round_trip_and_api_shape():
    job = make_job(priority=Priority.HIGH, metadata={"user": "u1"})
    again = Job.from_dict(job.to_dict())
    assert again == job
    api = job.to_api(queue_position=3)
    assert api["object"] == "job" and api["status"] == "queued" and api["queue_position"] == 3
    assert api["created_at"].endswith("Z")
    assert set(api) >= {"id", "type", "model", "priority", "status", "created_at", "started_at", "finished_at",
                        "queue_position", "attempts", "batch_id", "metadata", "result", "error"}
    assert "tenant" not in api and "input" not in api


def test_queue_position_is_null_unless_queued():
    job = make_job()
    transition(job, JobStatus.RUNNING, worker="w")
    assert job.to_api(queue_position=4)["queue_position"] is None


def test_isoformat_is_utc_with_z():
    assert isoformat(0) == "1970-01-01T00:00:00.000Z"
    assert isoformat(None) is None


def test_isoformat_truncates_to_milliseconds_as_datetime_does():
    # datetime rounds a timestamp to microseconds, then the text keeps whole milliseconds
    assert isoformat(1700000000.0019) == "2023-11-14T22:13:20.001Z"
    assert isoformat(1700000000.9999996) == "2023-11-14T22:13:21.000Z"  # rounds into the next second
    assert isoformat(1764650000.1239) == "2025-12-02T04:33:20.123Z"
    assert isoformat(1764650000.5) == "2025-12-02T04:33:20.500Z"  # the same second again, from the cached text


def test_ids_are_26_crockford_digits_after_the_prefix():
    ident = new_id("job")
    prefix, digits = ident.split("_")
    assert prefix == "job" and len(digits) == 26
    assert set(digits) <= set("0123456789abcdefghjkmnpqrstvwxyz")
    value = 0
    for ch in digits:
        value = value * 32 + "0123456789abcdefghjkmnpqrstvwxyz".index(ch)
    assert abs((value >> 80) / 1000 - time.time()) < 60  # the top 48 bits are the creation time in milliseconds

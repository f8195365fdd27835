"""Micro-batching without Celery: one engine call for the waiting jobs of a model, each job its own outcome."""

import numpy as np
import pytest

from inferno_jobs.control import QueueControl
from inferno_jobs.errors import InvalidRequest
from inferno_jobs.job import Job, JobStatus, JobType, Priority
from inferno_jobs.model import ModelRepository
from inferno_jobs.queue import queue_name
from inferno_jobs.store import JobStore
from workers.batching import BatchRunner, QueuePaused, owner_alive
from workers.engine import Engine


@pytest.fixture
def store(fake_redis, settings):
    return JobStore(fake_redis, settings)


def new(store, features, model="iris", priority=Priority.NORMAL):
    job = Job.create(type=JobType.PREDICT, model=model, tenant="t", input={"features": features}, priority=priority)
    return store.create(job)[0]


class CountingEngine:
    def __init__(self, settings):
        self.engine = Engine(settings)
        self.calls: list[int] = []

    def run(self, model, inputs):
        self.calls.append(len(inputs))
        return self.engine.run(model, inputs)


def runner(store, settings, engine):
    return BatchRunner(store, engine.run, model_config=ModelRepository(settings.model_dir).get)


def test_waiting_jobs_of_a_model_run_as_one_engine_call(store, settings):
    engine = CountingEngine(settings)
    jobs = [new(store, [[5.1, 3.5, 1.4, 0.2]] * (i + 1)) for i in range(5)]
    finished = runner(store, settings, engine).run(jobs[0].id)
    assert engine.calls == [5]
    assert [j.status for j in finished] == [JobStatus.SUCCEEDED] * 5
    for i, job in enumerate(jobs):
        stored = store.get(job.id)
        assert stored.status is JobStatus.SUCCEEDED and len(stored.result["predictions"]) == i + 1


def test_each_job_gets_what_it_would_get_alone(store, settings):
    rows = [[[5.1, 3.5, 1.4, 0.2]], [[6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], [[4.9, 3.0, 1.4, 0.2]]]
    alone = [Engine(settings).run("iris", [{"features": r}])[0] for r in rows]
    jobs = [new(store, r) for r in rows]
    runner(store, settings, CountingEngine(settings)).run(jobs[0].id)
    for job, expected in zip(jobs, alone):
        result = store.get(job.id).result
        assert result["predictions"] == expected["predictions"] and result["labels"] == expected["labels"]
        # batched kernels may round the last float bits differently
        np.testing.assert_allclose(result["probabilities"], expected["probabilities"], atol=1e-6)


def test_a_bad_input_fails_alone(store, settings):
    good, bad, other = new(store, [[5.1, 3.5, 1.4, 0.2]]), new(store, [[1.0, 2.0]]), new(store, [[6.0, 3.0, 5.0, 2.0]])
    runner(store, settings, CountingEngine(settings)).run(good.id)
    assert store.get(good.id).status is JobStatus.SUCCEEDED
    assert store.get(other.id).status is JobStatus.SUCCEEDED
    failed = store.get(bad.id)
    assert failed.status is JobStatus.FAILED and failed.error["code"] == "INVALID_REQUEST"


def test_batches_stop_at_max_batch_size_and_hold_one_priority_besides_their_first(store, settings, model_dir):
    import json
    import shutil
    shutil.copytree(model_dir / "iris", model_dir / "iris-b3", dirs_exist_ok=True)
    config = json.loads((model_dir / "iris-b3" / "config.json").read_text())
    (model_dir / "iris-b3" / "config.json").write_text(json.dumps({**config, "max_batch_size": 3}))
    first = new(store, [[5.0, 3.0, 1.0, 0.2]], model="iris-b3", priority=Priority.LOW)
    lows = [new(store, [[5.0, 3.0, 1.0, 0.2]], model="iris-b3", priority=Priority.LOW) for _ in range(4)]
    high = new(store, [[5.0, 3.0, 1.0, 0.2]], model="iris-b3", priority=Priority.HIGH)
    engine = CountingEngine(settings)
    # A high job waiting joins the next batch that starts, with no lows: it does not wait for them to be stored.
    finished = runner(store, settings, engine).run(first.id)
    assert engine.calls == [2] and {j.id for j in finished} == {first.id, high.id}
    # With only lows waiting, a batch fills up to max_batch_size.
    finished = runner(store, settings, engine).run(lows[0].id)
    assert engine.calls == [2, 3] and {j.id for j in finished} == {lows[0].id, lows[1].id, lows[2].id}
    assert store.get(lows[3].id).status is JobStatus.QUEUED
    # A high job's batch carries no lows.
    urgent = new(store, [[5.0, 3.0, 1.0, 0.2]], model="iris-b3", priority=Priority.HIGH)
    assert [j.id for j in runner(store, settings, engine).run(urgent.id)] == [urgent.id]
    assert store.get(lows[3].id).status is JobStatus.QUEUED


def test_a_duplicate_delivery_is_a_no_op(store, settings):
    job = new(store, [[5.1, 3.5, 1.4, 0.2]])
    engine = CountingEngine(settings)
    runner(store, settings, engine).run(job.id)
    assert runner(store, settings, engine).run(job.id) == []
    assert engine.calls == [1] and len(store.get(job.id).attempts) == 1


def test_a_message_of_a_paused_queue_runs_nothing_and_a_batch_skips_paused_queues(store, settings):
    high_queue = queue_name("cpu", Priority.HIGH)
    high = new(store, [[5.1, 3.5, 1.4, 0.2]], priority=Priority.HIGH)
    normal = new(store, [[5.1, 3.5, 1.4, 0.2]])
    QueueControl(store).pause(high_queue)
    engine = CountingEngine(settings)
    # The paused set is read with the message's job (one round trip): the message goes back, nothing is claimed.
    with pytest.raises(QueuePaused):
        runner(store, settings, engine).run(high.id, high_queue)
    assert store.get(high.id).status is JobStatus.QUEUED and engine.calls == []
    # A message of a running queue runs its job; its micro-batch, which would take the more urgent high job,
    # leaves that paused queue's job where it is.
    assert [j.id for j in runner(store, settings, engine).run(normal.id, queue_name("cpu", Priority.NORMAL))] \
        == [normal.id]
    assert store.get(high.id).status is JobStatus.QUEUED and engine.calls == [1]
    QueueControl(store).resume(high_queue)
    assert [j.id for j in runner(store, settings, engine).run(high.id, high_queue)] == [high.id]


def test_unknown_model_fails_the_job_with_model_not_found(store, settings):
    job = new(store, [[1, 2, 3, 4]], model="gone")
    [done] = runner(store, settings, CountingEngine(settings)).run(job.id)
    assert done.status is JobStatus.FAILED and done.error["code"] == "MODEL_NOT_FOUND"


def test_a_broken_model_file_fails_with_a_clear_load_error(store, settings, model_dir):
    broken = model_dir / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "config.json").write_text('{"type": "predict"}')
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    job = new(store, [[1, 2, 3, 4]], model="broken")
    [done] = runner(store, settings, CountingEngine(settings)).run(job.id)
    assert done.status is JobStatus.FAILED and done.error["code"] == "MODEL_NOT_LOADED"
    assert "broken" in done.error["message"]


def test_engine_errors_are_per_input(settings):
    out = Engine(settings).run("iris", [{"features": [[1, 2, 3, 4]]}, {"features": [[1]]}])
    assert "predictions" in out[0] and isinstance(out[1], InvalidRequest)


def test_owner_alive_knows_dead_local_pids():
    import os
    import socket
    assert owner_alive(f"{socket.gethostname()}:{os.getpid()}")
    assert not owner_alive(f"{socket.gethostname()}:999999")
    assert owner_alive("some-other-host:1")


def test_the_model_repository_sees_changed_and_removed_models(tmp_path):
    import json
    import os

    from inferno_jobs.errors import ModelNotFound

    repo = ModelRepository(tmp_path)
    (tmp_path / "m").mkdir()
    config = tmp_path / "m" / "config.json"
    config.write_text(json.dumps({"type": "predict", "max_batch_size": 4}))
    assert repo.get("m").max_batch_size == 4
    config.write_text(json.dumps({"type": "predict", "max_batch_size": 8}))
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 1_000_000))
    assert repo.get("m").max_batch_size == 8
    config.unlink()
    with pytest.raises(ModelNotFound):
        repo.get("m")


def test_the_soft_time_limit_ends_the_whole_run_timed_out_never_failed_or_retried_input_by_input(store, settings):
    """Celery raises SoftTimeLimitExceeded into the run when timeout_s passes; no runner's catch-all may turn it into
    one input's failure (INFERENCE_FAILED) or start the inputs again one by one."""
    from billiard.exceptions import SoftTimeLimitExceeded

    engine = Engine(settings)
    tabular = engine.runner("iris")
    calls = []

    def out_of_time(inputs):
        calls.append(len(inputs))
        raise SoftTimeLimitExceeded()
    tabular.run_batch = out_of_time
    jobs = [new(store, [[5.1, 3.5, 1.4, 0.2]]) for _ in range(3)]
    batch = BatchRunner(store, engine.run, model_config=ModelRepository(settings.model_dir).get,
                        timeout_errors=(SoftTimeLimitExceeded,))
    finished = batch.run(jobs[0].id)
    assert calls == [3]  # not once more per input
    assert [j.status for j in finished] == [JobStatus.TIMED_OUT] * 3
    assert store.get(jobs[1].id).error["code"] == "TIMEOUT"


def test_a_run_past_its_deadline_is_timed_out_whatever_it_answered():
    job = Job.create(type=JobType.PREDICT, model="iris", tenant="t", input={"features": [[1, 2, 3, 4]]},
                     priority=Priority.NORMAL, timeout_s=1)
    job.status, job.started_at = JobStatus.RUNNING, 1.0  # started long ago: its deadline passed
    status, _, error = BatchRunner.ending(job, InvalidRequest("a failure the time limit may have caused"))
    assert status is JobStatus.TIMED_OUT and error["code"] == "TIMEOUT"

"""Circuit breakers per model on fakeredis, with a clock the tests move: opening after N failed engine calls,
the cooldown, one half-open probe under concurrency, recovery, and what does not count as the model failing."""

from __future__ import annotations

import threading
import time

import pytest

from inferno_jobs.circuit import CircuitBreaker, CircuitState, verdict
from inferno_jobs.config import Settings
from inferno_jobs.errors import (CircuitOpen, ContextLengthExceeded, InferenceFailed, InvalidRequest, ModelNotLoaded,
                                 Timeout)
from inferno_jobs.job import Job, JobStatus, JobType
from inferno_jobs.metrics import CIRCUIT_OPENS, Metrics
from inferno_jobs.model import ModelRepository
from inferno_jobs.store import JobStore
from workers.batching import BatchRunner

BROKEN = [ModelNotLoaded("model 'iris' failed to load: bad file")]
RESULT = [{"predictions": [0]}]


class Clock:
    def __init__(self):
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def breaker(fake_redis, settings, clock):
    tuned = Settings.from_env({}, **{**settings.__dict__, "circuit_failure_threshold": 3, "circuit_open_s": 30})
    return CircuitBreaker(fake_redis, tuned, clock=clock)


def opens(breaker) -> float:
    return Metrics(breaker.redis, breaker.keys).counter(CIRCUIT_OPENS).get(("iris",), 0)


def test_consecutive_failures_open_the_circuit_and_new_jobs_fail_fast(breaker):
    for _ in range(2):
        breaker.record("iris", BROKEN)
        breaker.admit("iris")  # still closed: no error
    assert breaker.get("iris").state is CircuitState.CLOSED and breaker.get("iris").consecutive_failures == 2
    breaker.record("iris", BROKEN)
    circuit = breaker.get("iris")
    assert circuit.state is CircuitState.OPEN and circuit.consecutive_failures == 3 and circuit.retry_after_s == 30
    assert circuit.to_api()["opened_at"] == "2023-11-14T22:13:20.000Z"
    with pytest.raises(CircuitOpen) as refused:
        breaker.admit("iris")
    assert refused.value.status == 503 and refused.value.code == "MODEL_NOT_LOADED"
    assert refused.value.retry_after_s == 30
    assert refused.value.details == {"reason": "circuit_open", "model": "iris", "circuit": "open",
                                     "retry_after_s": 30}
    assert opens(breaker) == 1
    assert breaker.get("diabetes").state is CircuitState.CLOSED  # per model


def test_retry_after_counts_down_the_cooldown(breaker, clock):
    for _ in range(3):
        breaker.record("iris", BROKEN)
    clock.t += 20.5
    with pytest.raises(CircuitOpen) as refused:
        breaker.admit("iris")
    assert refused.value.retry_after_s == 10 and breaker.get("iris").retry_after_s == 10


def test_a_success_resets_the_count(breaker):
    for _ in range(2):
        breaker.record("iris", BROKEN)
    breaker.record("iris", RESULT)
    for _ in range(2):
        breaker.record("iris", BROKEN)
    assert breaker.get("iris").state is CircuitState.CLOSED and breaker.get("iris").consecutive_failures == 2


@pytest.mark.parametrize("outcomes, expected", [
    ([InvalidRequest("bad features")], None),
    ([ContextLengthExceeded("too long")], None),
    ([Timeout("run took longer than its timeout_s")] * 3, None),
    ([InferenceFailed("inference failed: x"), InvalidRequest("bad")], None),  # one bad input, not the model
    ([], None),
    ([InferenceFailed("inference failed: x"), {"predictions": [1]}], True),
    ([InferenceFailed("inference failed: onnx")] * 2, False),
    (BROKEN, False),
])
def test_only_model_failures_count(outcomes, expected):
    assert verdict(outcomes) is expected


def test_input_errors_and_timeouts_neither_open_nor_reset(breaker):
    breaker.record("iris", BROKEN)
    breaker.record("iris", BROKEN)
    for _ in range(10):
        breaker.record("iris", [InvalidRequest("bad")])
        breaker.record("iris", [Timeout("slow")])
    assert breaker.get("iris").state is CircuitState.CLOSED and breaker.get("iris").consecutive_failures == 2
    breaker.record("iris", BROKEN)
    assert breaker.get("iris").state is CircuitState.OPEN


def test_after_the_cooldown_exactly_one_concurrent_caller_is_the_probe(breaker, clock):
    for _ in range(3):
        breaker.record("iris", BROKEN)
    clock.t += 30
    assert breaker.get("iris").state is CircuitState.HALF_OPEN and breaker.get("iris").retry_after_s == 0
    admitted, refused, start = [], [], threading.Barrier(16)

    def submit(i):
        start.wait()
        try:
            admitted.append(breaker.admit("iris", token=f"req_{i}"))
        except CircuitOpen as exc:
            refused.append(exc)
    threads = [threading.Thread(target=submit, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted == [True] and len(refused) == 15
    assert all(e.details["circuit"] == "half_open" and 1 <= e.retry_after_s <= 60 for e in refused)
    assert breaker.get("iris").state is CircuitState.HALF_OPEN and breaker.get("iris").retry_after_s >= 59


def test_the_probe_succeeding_closes_the_circuit(breaker, clock):
    for _ in range(3):
        breaker.record("iris", BROKEN)
    clock.t += 31
    assert breaker.admit("iris") is True
    breaker.record("iris", RESULT)
    circuit = breaker.get("iris")
    assert circuit.state is CircuitState.CLOSED and circuit.consecutive_failures == 0 and circuit.opened_at is None
    assert breaker.admit("iris") is False and breaker.admit("iris") is False  # everyone gets through again
    assert opens(breaker) == 1


def test_the_probe_failing_opens_it_again_for_a_fresh_cooldown(breaker, clock):
    for _ in range(3):
        breaker.record("iris", BROKEN)
    clock.t += 40
    assert breaker.admit("iris") is True
    breaker.record("iris", BROKEN)
    circuit = breaker.get("iris")
    assert circuit.state is CircuitState.OPEN and circuit.retry_after_s == 30
    assert circuit.opened_at == clock.t and opens(breaker) == 2
    clock.t += 30
    assert breaker.admit("iris") is True  # the next cooldown ends with a new probe


def test_failures_during_the_cooldown_keep_it_open_without_a_new_cooldown(breaker, clock):
    for _ in range(3):
        breaker.record("iris", BROKEN)
    clock.t += 10
    breaker.record("iris", BROKEN)  # a job accepted before the circuit opened, failing late
    circuit = breaker.get("iris")
    assert circuit.state is CircuitState.OPEN and circuit.retry_after_s == 20 and opens(breaker) == 1


def test_a_probe_that_never_reports_frees_its_slot(fake_redis, settings, clock):
    breaker = CircuitBreaker(fake_redis, Settings.from_env({}, **{
        **settings.__dict__, "circuit_failure_threshold": 1, "circuit_open_s": 5, "circuit_probe_s": 1}), clock=clock)
    breaker.record("iris", BROKEN)
    clock.t += 5
    assert breaker.admit("iris") is True
    with pytest.raises(CircuitOpen):
        breaker.admit("iris")
    time.sleep(1.1)  # the probe token's TTL is kept by Redis
    assert breaker.admit("iris") is True


def test_an_operator_reset_closes_it(breaker):
    for _ in range(3):
        breaker.record("iris", BROKEN)
    assert breaker.reset("iris") is True
    assert breaker.get("iris").state is CircuitState.CLOSED and breaker.get("iris").consecutive_failures == 0
    assert breaker.admit("iris") is False
    assert breaker.reset("iris") is False


def test_threshold_zero_turns_breakers_off(fake_redis, settings):
    off = CircuitBreaker(fake_redis, Settings.from_env({}, **{**settings.__dict__, "circuit_failure_threshold": 0}))
    for _ in range(50):
        off.record("iris", BROKEN)
    off.admit("iris")
    assert off.get("iris").state is CircuitState.CLOSED and not fake_redis.keys("*circuit*")


def test_every_process_sees_the_same_breaker(fake_redis, breaker, clock):
    worker_side = CircuitBreaker(fake_redis, breaker.settings, clock=clock)
    for _ in range(3):
        worker_side.record("iris", BROKEN)
    with pytest.raises(CircuitOpen):
        breaker.admit("iris")


def test_the_worker_records_each_engine_call(fake_redis, settings):
    """BatchRunner's hook: an engine that raises opens the circuit after ``threshold`` micro-batches."""
    tuned = Settings.from_env({}, **{**settings.__dict__, "circuit_failure_threshold": 2})
    store = JobStore(fake_redis, tuned)

    def broken_engine(model, inputs):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION")
    runner = BatchRunner(store, broken_engine, model_config=ModelRepository(tuned.model_dir).get)
    finished = []
    for _ in range(2):
        job = store.create(Job.create(type=JobType.PREDICT, model="iris", tenant="t",
                                      input={"features": [[5.1, 3.5, 1.4, 0.2]]}))[0]
        finished += runner.run(job.id)
    assert [j.status for j in finished] == [JobStatus.FAILED] * 2
    assert finished[0].error["code"] == "INFERENCE_FAILED"
    assert CircuitBreaker(fake_redis, tuned).get("iris").state is CircuitState.OPEN

"""The admission script (inferno_jobs/admission.py) on a real Redis: each refusal, their precedence, the probe."""

from __future__ import annotations

import time

import pytest

from inferno_jobs import admission, atomic
from inferno_jobs.circuit import CircuitBreaker
from inferno_jobs.config import Settings
from inferno_jobs.keyspace import Keyspace

pytestmark = pytest.mark.integration


@pytest.fixture
def keys(live_settings) -> Keyspace:
    return Keyspace(live_settings.key_prefix)


def _check(live_redis, keys, **request):
    return admission.check(live_redis, admission.guard(keys, admission.Request(pool="cpu", tenant="t1", **request)))


def _refusal(live_redis, keys, **request):
    with pytest.raises(atomic.Refused) as refused:
        _check(live_redis, keys, **request)
    return admission.reason(refused.value.reply)


def test_no_limit_admits(live_redis, keys):
    assert _check(live_redis, keys) == [1, 0]
    assert _check(live_redis, keys, model="iris", in_flight_limit=5, depth_limit=5, concurrency_limit=5) == [1, 0]


def test_each_limit_refuses_at_its_count(live_redis, keys):
    live_redis.zadd(keys.queued("inferno.cpu.high"), {"j1": 1})
    live_redis.zadd(keys.queued("inferno.cpu.low"), {"j2": 1})
    live_redis.zadd(keys.queued("inferno.gpu.normal"), {"j3": 1})  # another pool: only the throttle counts it
    live_redis.zadd(keys.running_leases(), {"j4": time.time() + 60})
    assert _refusal(live_redis, keys, depth_limit=2) == ("depth", [2])
    assert _check(live_redis, keys, depth_limit=3) == [1, 0]
    assert _refusal(live_redis, keys, in_flight_limit=4) == ("in_flight", [4])
    assert _check(live_redis, keys, in_flight_limit=5) == [1, 0]
    live_redis.zadd(keys.tenant_active("t1"), {"a": time.time() + 60, "b": time.time() + 60, "gone": 1})
    assert _refusal(live_redis, keys, concurrency_limit=2) == ("active", [2])  # the expired entry is dropped
    assert live_redis.zcard(keys.tenant_active("t1")) == 2
    # The throttle answers before the depth, the depth before the concurrency.
    assert _refusal(live_redis, keys, in_flight_limit=1, depth_limit=1, concurrency_limit=1)[0] == "in_flight"
    assert _refusal(live_redis, keys, depth_limit=1, concurrency_limit=1)[0] == "depth"


def test_an_open_circuit_answers_first_then_lets_one_probe_through(live_redis, keys, live_settings):
    settings = Settings.from_env({}, **{**live_settings.__dict__, "circuit_failure_threshold": 1,
                                        "circuit_open_s": 30})
    opened_at = time.time()
    CircuitBreaker(live_redis, settings, clock=lambda: opened_at).record_failure("iris")
    live_redis.zadd(keys.queued("inferno.cpu.normal"), {"j1": 1})
    why, (code, wait_s) = _refusal(live_redis, keys, model="iris", depth_limit=1)
    assert why == "circuit" and code == 0 and 25 <= wait_s <= 30
    later = admission.guard(keys, admission.Request(pool="cpu", tenant="t1", model="iris", probe_token="req_a",
                                                    probe_ms=5000), clock=lambda: opened_at + 31)
    assert admission.check(live_redis, later) == [1, 1]  # the probe
    assert live_redis.get(keys.circuit_probe("iris")) == b"req_a"
    other = admission.guard(keys, admission.Request(pool="cpu", tenant="t1", model="iris", probe_token="req_b",
                                                    probe_ms=5000), clock=lambda: opened_at + 31)
    with pytest.raises(atomic.Refused) as refused:
        admission.check(live_redis, other)
    assert admission.reason(refused.value.reply)[1][0] == 3  # half-open, another caller's probe out

"""Circuit breakers per model: a model whose runs keep failing stops taking new jobs for a while.

One breaker per model, kept in Redis so every API replica and every worker agrees on it:

- **closed** (no key): jobs are accepted. Each engine call (a micro-batch, or a batch-file chunk) that fails
  because the *model* is broken (``MODEL_NOT_LOADED``, ``INFERENCE_FAILED`` for every input) adds one to the
  consecutive-failure count; any engine call that produces a result resets it. A job's own bad input, a job past
  its ``timeout_s`` and a cancellation neither count nor reset.
- **open**: after ``circuit_failure_threshold`` consecutive failures. New jobs for the model fail fast with 503
  ``MODEL_NOT_LOADED`` and ``Retry-After`` (the seconds left of ``circuit_open_s``).
- **half-open**: once the cooldown is over. Exactly one submission gets through as the *probe* (a ``SET NX``
  token that expires after ``circuit_probe_s``, so a probe that never reports does not wedge the breaker); the
  others still get 503. A successful engine call closes the circuit; a failed one opens it again for a fresh
  cooldown.

Every transition is one Lua script, so concurrent workers and API processes never see a half-made change, and the
``circuit_breaker_open`` counter moves in the same script as the opening it counts.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Iterable, Sequence

import redis

from inferno_jobs.config import Settings
from inferno_jobs.errors import CircuitOpen, InfernoError
from inferno_jobs.job import isoformat
from inferno_jobs.keyspace import Keyspace
from inferno_jobs.metrics import CIRCUIT_OPENS, _field

log = logging.getLogger(__name__)

# Error codes that say the model, not the job, is broken.
MODEL_FAILURE_CODES = frozenset({"MODEL_NOT_LOADED", "INFERENCE_FAILED"})


class CircuitState(str, Enum):
    """Where a model's breaker stands."""

    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"

    @property
    def gauge(self) -> int:
        """The value of ``inferno_circuit_breaker_state``: 0 closed, 1 half-open, 2 open."""
        return {"closed": 0, "half_open": 1, "open": 2}[self.value]


@dataclass(frozen=True)
class Circuit:
    """A snapshot of one model's breaker."""

    model: str
    state: CircuitState = CircuitState.CLOSED
    consecutive_failures: int = 0
    opened_at: float | None = None
    retry_after_s: int | None = None  # open: cooldown left; half-open: until another probe may go (0: now)

    def to_api(self) -> dict:
        """The ``circuit`` object of ``GET /models``."""
        return {"state": self.state.value, "consecutive_failures": self.consecutive_failures,
                "opened_at": isoformat(self.opened_at), "retry_after_s": self.retry_after_s}


def verdict(outcomes: Sequence) -> bool | None:
    """What one engine call's outcomes say about the model: True it works, False it is broken, None nothing.

    Any result means the model ran. Every outcome a model-level error (the engine raised, the model failed to load,
    or every input failed inside the runtime) means it is broken. Anything else (bad inputs, timeouts) is the
    jobs' own business.
    """
    if not outcomes:
        return None
    if any(not isinstance(o, InfernoError) for o in outcomes):
        return True
    if all(o.code in MODEL_FAILURE_CODES for o in outcomes):
        return False
    return None


# KEYS: circuit, probe. ARGV: now, probe_ms, token.
# Returns {1, 0} closed, {2, 0} this caller is the probe, {0, wait_s} refused while open, {3, wait_s} refused
# while half-open (another caller holds the probe).
ADMIT = """
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then return {1, 0} end
local left = tonumber(redis.call('HGET', KEYS[1], 'open_until')) - tonumber(ARGV[1])
if left > 0 then return {0, math.ceil(left)} end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[2]) then return {2, 0} end
return {3, math.ceil(math.max(redis.call('PTTL', KEYS[2]), 1000) / 1000)}
"""

# KEYS: circuit, probe, open counter. ARGV: now, threshold, open_s, counter field.
# Returns 'opened' (closed -> open), 'reopened' (half-open -> open), 'open' (still cooling down), 'closed'.
_FAILURE = """
local now = tonumber(ARGV[1])
redis.call('HINCRBY', KEYS[1], 'failures', 1)
local function open()
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[1],
             'open_until', string.format('%.3f', now + tonumber(ARGV[3])))
  redis.call('DEL', KEYS[2])
  redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
end
if redis.call('HGET', KEYS[1], 'state') == 'open' then
  if now >= tonumber(redis.call('HGET', KEYS[1], 'open_until')) then
    open()
    return 'reopened'
  end
  return 'open'
end
if tonumber(redis.call('HGET', KEYS[1], 'failures')) >= tonumber(ARGV[2]) then
  open()
  return 'opened'
end
return 'closed'
"""

# KEYS: circuit, probe. A closed circuit with no failures is no key at all, so success on a healthy model writes
# nothing. Returns 1 if the circuit was open (it closed now), else 0.
_SUCCESS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('DEL', KEYS[1], KEYS[2])
if state == 'open' then return 1 end
return 0
"""


def admitted(model: str, token: str, code: int, wait_s) -> bool:
    """The verdict of :data:`ADMIT` for ``model``: False (closed), True (``token`` is the half-open probe), or
    :class:`CircuitOpen` raised (open, or half-open with another caller's probe out)."""
    if code == 1:
        return False
    if code == 2:
        log.info("circuit half-open: probe job let through", extra={"model": model, "probe": token})
        return True
    state = CircuitState.OPEN if code == 0 else CircuitState.HALF_OPEN
    wait_s = max(1, int(wait_s))
    why = (f"retry in {wait_s} s" if state is CircuitState.OPEN
           else f"a probe job is checking it; retry in {wait_s} s")
    raise CircuitOpen(f"model {model!r} is failing: its circuit breaker is {state.value.replace('_', '-')}, "
                      f"so it takes no new jobs for now; {why}",
                      details={"reason": "circuit_open", "model": model, "circuit": state.value,
                               "retry_after_s": wait_s},
                      retry_after_s=wait_s)


class CircuitBreaker:
    """The breakers of one deployment's models. ``clock`` (Unix seconds) is injectable for tests."""

    def __init__(self, client: redis.Redis, settings: Settings, clock: Callable[[], float] = time.time):
        self.redis = client
        self.settings = settings
        self.keys = Keyspace(settings.key_prefix)
        self.clock = clock
        self._failure = client.register_script(_FAILURE)
        self._success = client.register_script(_SUCCESS)

    @property
    def enabled(self) -> bool:
        """False when ``INFERNO_CIRCUIT_FAILURE_THRESHOLD=0``."""
        return self.settings.circuit_failure_threshold > 0

    def _now(self) -> str:
        return f"{self.clock():.3f}"

    # -- the API: may a new job for this model be accepted? -------------------------------------------------------

    def admit(self, model: str, token: str = "probe") -> bool:
        """Let a new job for ``model`` through, or raise :class:`CircuitOpen` (503 with ``Retry-After``).

        Returns True when this caller is the half-open probe (``token`` names it in Redis, e.g. a request id).
        One Redis round trip. (A job's submission runs the same script inside its admission:
        inferno_jobs/admission.py.)
        """
        if not self.enabled:
            return False
        code, wait_s = self.redis.eval(ADMIT, 2, self.keys.circuit(model), self.keys.circuit_probe(model),
                                       self._now(), self.settings.circuit_probe_s * 1000, token)
        return admitted(model, token, code, wait_s)

    # -- the workers: what did an engine call say about the model? ----------------------------------------------

    def record(self, model: str, outcomes: Sequence) -> None:
        """Record one engine call's outcomes for ``model`` (see :func:`verdict`)."""
        if not self.enabled:
            return
        works = verdict(outcomes)
        if works is True:
            self.record_success(model)
        elif works is False:
            self.record_failure(model, next((o.message for o in outcomes), ""))

    def record_success(self, model: str) -> None:
        """The model ran: the failure count starts over and an open circuit closes."""
        if self._success(keys=[self.keys.circuit(model), self.keys.circuit_probe(model)]):
            log.warning("circuit closed: the model works again", extra={"model": model})

    def record_failure(self, model: str, reason: str = "") -> None:
        """The model failed as a whole: one more consecutive failure; may open (or reopen) the circuit."""
        outcome = self._failure(
            keys=[self.keys.circuit(model), self.keys.circuit_probe(model), self.keys.metric(CIRCUIT_OPENS.name)],
            args=[self._now(), self.settings.circuit_failure_threshold, self.settings.circuit_open_s,
                  _field((model,))])
        outcome = outcome.decode() if isinstance(outcome, bytes) else outcome
        if outcome in ("opened", "reopened"):
            log.warning("circuit %s: new jobs for the model fail fast for %d s", outcome,
                        self.settings.circuit_open_s, extra={"model": model, "reason": reason[:500]})

    # -- operators --------------------------------------------------------------------------------------------------

    def reset(self, model: str) -> bool:
        """Close ``model``'s circuit by hand and forget its failures; True if it was open."""
        with self.redis.pipeline() as pipe:
            pipe.hget(self.keys.circuit(model), "state")
            pipe.delete(self.keys.circuit(model), self.keys.circuit_probe(model))
            state, _ = pipe.execute()
        was_open = state in (b"open", "open")
        if was_open:
            log.warning("circuit closed by an operator", extra={"model": model})
        return was_open

    # -- reading ----------------------------------------------------------------------------------------------------

    def get(self, model: str) -> Circuit:
        """``model``'s breaker now."""
        return self.get_many([model])[0]

    def get_many(self, models: Iterable[str]) -> list[Circuit]:
        """The breakers of ``models`` (one pipeline), in order."""
        models = list(models)
        if not self.enabled or not models:
            return [Circuit(model) for model in models]
        with self.redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.hmget(self.keys.circuit(model), "state", "failures", "opened_at", "open_until")
                pipe.pttl(self.keys.circuit_probe(model))
            raw = pipe.execute()
        now = self.clock()
        out = []
        for i, model in enumerate(models):
            (state, failures, opened_at, open_until), probe_ms = raw[2 * i], raw[2 * i + 1]
            failures = int(failures or 0)
            if state not in (b"open", "open"):
                out.append(Circuit(model, consecutive_failures=failures))
                continue
            left = float(open_until) - now
            if left > 0:
                out.append(Circuit(model, CircuitState.OPEN, failures, float(opened_at), math.ceil(left)))
            else:
                out.append(Circuit(model, CircuitState.HALF_OPEN, failures, float(opened_at),
                                   math.ceil(probe_ms / 1000) if probe_ms > 0 else 0))
        return out

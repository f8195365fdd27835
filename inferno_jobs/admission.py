"""Whether a new job may be accepted, decided in Redis by one script: its model's circuit breaker, the deployment's
throttle, its pool's queue depth and its tenant's concurrent jobs.

The script is the guard of the transaction that stores the job (inferno_jobs/atomic.py): a submission is checked
and stored in one round trip, and a refused one leaves nothing behind. It also runs alone (:func:`check`) where
what is admitted is not a new record (a retried job). The API turns a refusal into its error (api/ratelimit.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from inferno_jobs import atomic
from inferno_jobs.circuit import ADMIT
from inferno_jobs.job import now
from inferno_jobs.keyspace import Keyspace
from inferno_jobs.queue import all_queues, pool_queues

# KEYS: circuit, probe, the tenant's active set, running leases, the queued sets of the job's pool, then those of
# the other pools (only when throttling). ARGV: circuit clock, probe ms, probe token, circuit on (1/0), in-flight
# limit, queue depth limit, concurrency limit (each 0: no such limit), now, how many queued sets are the pool's.
# Returns {1, probe (1/0)} to admit, {0, 'circuit', code, wait_s}, {0, 'in_flight', n}, {0, 'depth', n} or
# {0, 'active', n} to refuse, in this order of precedence.
SCRIPT = atomic.nestable(f"""
local function circuit_admit(KEYS, ARGV)
{ADMIT.strip()}
end
local probe = 0
if ARGV[4] == '1' then
  local verdict = circuit_admit({{KEYS[1], KEYS[2]}}, {{ARGV[1], ARGV[2], ARGV[3]}})
  if verdict[1] == 0 or verdict[1] == 3 then return {{0, 'circuit', verdict[1], verdict[2]}} end
  if verdict[1] == 2 then probe = 1 end
end
local own, depth, others = tonumber(ARGV[9]), 0, 0
for i = 5, #KEYS do
  local n = redis.call('ZCARD', KEYS[i])
  if i < 5 + own then depth = depth + n else others = others + n end
end
local limit = tonumber(ARGV[5])
if limit > 0 then
  local in_flight = depth + others + redis.call('ZCARD', KEYS[4])
  if in_flight >= limit then return {{0, 'in_flight', in_flight}} end
end
limit = tonumber(ARGV[6])
if limit > 0 and depth >= limit then return {{0, 'depth', depth}} end
limit = tonumber(ARGV[7])
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[8])
  local active = redis.call('ZCARD', KEYS[3])
  if active >= limit then return {{0, 'active', active}} end
end
return {{1, probe}}
""")


@dataclass(frozen=True)
class Request:
    """What one new job is checked against. A limit of 0 is no limit; ``model`` None skips the circuit breaker."""

    pool: str
    tenant: str
    model: str | None = None
    probe_token: str = "probe"
    probe_ms: int = 0
    in_flight_limit: int = 0
    depth_limit: int = 0
    concurrency_limit: int = 0


def guard(keys: Keyspace, request: Request, clock=time.time) -> atomic.Guard:
    """The admission of ``request`` as the guard of an atomic transaction (``atomic.execute(guard=...)``).

    ``clock`` is the circuit breaker's (Unix seconds; tests move it)."""
    pool = pool_queues(request.pool)
    own = [keys.queued(q) for q in pool]
    others = [keys.queued(q) for q in all_queues() if q not in pool] if request.in_flight_limit else []
    model = request.model or ""
    return atomic.Guard(
        SCRIPT,
        [keys.circuit(model), keys.circuit_probe(model), keys.tenant_active(request.tenant), keys.running_leases(),
         *own, *others],
        [f"{clock():.3f}", request.probe_ms, request.probe_token, 1 if request.model else 0,
         request.in_flight_limit, request.depth_limit, request.concurrency_limit, now(), len(own)])


def check(client: redis.Redis, admission: atomic.Guard) -> list:
    """Run ``admission`` alone: its reply when it admits, else :class:`atomic.Refused` (nothing is written)."""
    reply = client.eval(admission.script, len(admission.keys), *admission.keys, *admission.args)
    admission.reply = reply
    if reply[0] == 0:
        raise atomic.Refused(reply)
    return reply


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def reason(reply: list) -> tuple[str, list]:
    """A refusal's reason (``circuit``, ``in_flight``, ``depth``, ``active``) and its numbers."""
    return _text(reply[1]), [int(v) for v in reply[2:]]

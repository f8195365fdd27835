"""Fair share between tenants inside one queue: start-time fair queuing on a Redis sorted set.

Each queued job gets a *tag* when it enters a queue: ``max(clock, tenant's last tag) + 1``, where ``clock`` is the
highest tag of a job of that queue that has started. Workers claim the lowest tag first (``fair_queue`` sorted
set), and the micro-batch gather orders a model's waiting jobs by priority then tag. So a tenant that submits 300
jobs gets tags 1..300, and a tenant that submits one job a moment later gets ``clock + 1``: it runs next, not after
the 300. A tenant that was idle gets no credit for it (its tag starts at the clock), and one tenant alone runs in
plain FIFO order. See docs/operations.md#fair-share.

The scripts run inside the store's MULTI (``EVAL`` is allowed there), so a job's tag, its queue indexes and its
status always change together.
"""

from __future__ import annotations

from inferno_jobs import atomic
from inferno_jobs.job import Job
from inferno_jobs.keyspace import Keyspace
from inferno_jobs.queue import PRIORITY_ORDER, queue_name

# Priorities are kept apart in a model's waiting set by this offset; tags stay far below it.
PRIORITY_OFFSET = 1e13

# KEYS: fair queue, tenant last tags, clock, model waiting set. ARGV: job id, tenant, priority index, batchable.
_ENQUEUE = atomic.nestable("""
local clock = tonumber(redis.call('GET', KEYS[3]) or '0')
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
local tag = math.max(clock, last) + 1
redis.call('HSET', KEYS[2], ARGV[2], tag)
redis.call('ZADD', KEYS[1], tag, ARGV[1])
if ARGV[4] == '1' then redis.call('ZADD', KEYS[4], tonumber(ARGV[3]) * 1e13 + tag, ARGV[1]) end
return tag
""")

# KEYS: fair queue, clock. ARGV: job id. A job that starts moves the queue's clock up to its tag.
_START = atomic.nestable("""
local tag = redis.call('ZSCORE', KEYS[1], ARGV[1])
if tag then
  local clock = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tonumber(tag) > clock then redis.call('SET', KEYS[2], tag) end
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return tag
""")


def enqueue(pipe, keys: Keyspace, job: Job, batchable: bool = True) -> None:
    """Queue the writes that tag ``job`` and add it to its queue's fair order and (when ``batchable``: other jobs'
    micro-batches may take it) its model's waiting set."""
    queue = queue_name(job.pool, job.priority)
    pipe.eval(_ENQUEUE, 4, keys.fair_queue(queue), keys.fair_last_tag(queue), keys.fair_clock(queue),
              keys.waiting(job.model), job.id, job.tenant, PRIORITY_ORDER.index(job.priority),
              "1" if batchable else "0")


def start(pipe, keys: Keyspace, job: Job) -> None:
    """Queue the writes for ``job`` leaving its queue because it started (the clock moves)."""
    queue = queue_name(job.pool, job.priority)
    pipe.eval(_START, 2, keys.fair_queue(queue), keys.fair_clock(queue), job.id)


def leave(pipe, keys: Keyspace, job: Job) -> None:
    """Queue the writes for ``job`` leaving its queue without starting (canceled, expired, discarded)."""
    pipe.zrem(keys.fair_queue(queue_name(job.pool, job.priority)), job.id)


def next_ids(client, keys: Keyspace, queue: str, limit: int) -> list[str]:
    """Up to ``limit`` queued job ids of ``queue`` in fair-share order: the ones to claim next."""
    ids = client.zrange(keys.fair_queue(queue), 0, limit - 1)
    return [i.decode() if isinstance(i, bytes) else i for i in ids]

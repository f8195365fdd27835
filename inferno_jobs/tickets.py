"""Run messages as tickets: how many Celery messages a queue needs.

A run message does not carry its job: it is a ticket for its queue. The worker that takes one runs the queue's
next job in fair-share order and, with it, the queued jobs of that model that fit in its micro-batch
(``workers/batching.py``). So a queue needs a message waiting only while no waiting message will come to its jobs,
not one per job: under load, a message per job meant that most messages found their job already run by another's
micro-batch, and each such message still cost its build in the API and its fetch, dispatch and ack in a worker.

Three rules keep every queued job reachable by a message, all checked inside Redis, atomically with the write
they guard:

- a new job stores its message only while fewer than ``max_waiting_messages`` wait in its queue's Celery list
  (:func:`store_if_needed`, in the script call that stores the job). A process that last saw that many waiting
  does not build one; if none waits by then after all, it sends one right after storing the job;
- a worker that starts a message when none is left waiting sends one more if the queue still has jobs after it
  claimed its micro-batch (:func:`send_if_needed`, checked in the script call that stores that message);
- the reconciler sends one to every queue that has queued jobs and no waiting message (:func:`starved`): the
  backstop for a message lost with a crashed worker before kombu restores it, or one a worker holds until its
  countdown (a message of a paused queue goes back with one).

A message that finds nothing to run is a no-op, so the rules may send one too many, never one too few. Jobs that
must run again (a retry, a released lease, a reconciler resend) send theirs as before, unconditionally.
"""

from __future__ import annotations

from inferno_jobs import atomic
from inferno_jobs.keyspace import Keyspace

# KEYS[1]: the queue's Celery list. ARGV[1]: how many messages may wait there; then the message's commands (none
# when the caller saw enough waiting and did not build one), each as its argument count and its arguments.
# Stores them when fewer wait. Returns how many wait afterwards, or -1 when none waits and none was given (the
# caller must send one).
_STORE_IF_NEEDED = atomic.nestable("""
local waiting = redis.call('LLEN', KEYS[1])
if #ARGV == 1 then
  if waiting == 0 then return -1 end
  return waiting
end
if waiting >= tonumber(ARGV[1]) then return waiting end
local at = 2
while at <= #ARGV do
  local argc = tonumber(ARGV[at])
  redis.call(unpack(ARGV, at + 1, at + argc))
  at = at + argc + 1
end
return redis.call('LLEN', KEYS[1])
""")

# KEYS[1]: the queue's queued jobs; KEYS[2]: its Celery list. A guard: {1} when jobs wait and no message does.
_NEEDED = atomic.nestable("""
if redis.call('ZCARD', KEYS[1]) > 0 and redis.call('LLEN', KEYS[2]) == 0 then return {1} end
return {0}
""")


def store_if_needed(writes, queue: str, limit: int, commands: list[tuple[str, tuple]]) -> None:
    """Queue on ``writes`` (a transaction of :mod:`inferno_jobs.atomic`) the message ``commands`` (from
    ``workers.message``), to run only while fewer than ``limit`` messages wait in ``queue``'s Celery list (kombu
    names it after the queue). Its reply: how many wait afterwards; -1 when ``commands`` is empty and none waits,
    and the caller must send one."""
    argv: list = [limit]
    for name, args in commands:
        argv += [1 + len(args), name, *args]
    writes.eval(_STORE_IF_NEEDED, 1, queue, *argv)


class Outlook:
    """How many messages this process last saw waiting in each queue: a new job's message (about a sixth of the
    cost of ``POST /jobs``) is built only when it may be stored."""

    def __init__(self, limit: int):
        self.limit = limit
        self._waiting: dict[str, int] = {}

    def worth_building(self, queue: str) -> bool:
        return self._waiting.get(queue, 0) < self.limit

    def saw(self, queue: str, waiting: int) -> None:
        self._waiting[queue] = max(0, waiting)


def send_if_needed(client, keys: Keyspace, queue: str, commands: list[tuple[str, tuple]]) -> bool:
    """Store the message ``commands`` only if ``queue`` has queued jobs and no message waits; True if it did."""
    writes = client.pipeline(transaction=False)
    for name, args in commands:
        getattr(writes, name)(*args)
    try:
        atomic.execute(writes, guard=atomic.Guard(_NEEDED, keys=[keys.queued(queue), queue]))
    except atomic.Refused:
        return False
    return True


def starved(client, keys: Keyspace, queues: list[str]) -> list[str]:
    """Those of ``queues`` that have queued jobs and no message waiting, in one round trip."""
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.zcard(keys.queued(queue))
            pipe.llen(queue)
        replies = pipe.execute()
    return [queue for queue, depth, waiting in zip(queues, replies[::2], replies[1::2]) if depth and not waiting]

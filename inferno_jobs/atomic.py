"""The queued commands of a pipeline run as one server-side script call: atomic like ``MULTI``/``EXEC``, at the
cost of one command.

A transaction of twenty commands costs redis-py and Redis forty replies (each ``QUEUED``, then ``EXEC``'s) and
the client the encoding and parsing of every one; storing a job, or claiming a micro-batch of them, is such a
transaction. :func:`execute` sends the same commands as the arguments of one ``EVAL`` of a small Lua runner that
replays them in order, so Redis runs them as atomically as ``MULTI`` did, and answers once.

Optimistic locking comes with it: ``unchanged={key: value_read}`` makes the call write nothing (and raise
``redis.WatchError``, for the caller's retry loop) when one of those keys changed since it was read. That is what
``WATCH`` did, without its round trip (``WATCH``, read, ``MULTI``/``EXEC``: three; read, call: two).

Commands are queued as on any pipeline (``writes.set(...)``, ``writes.zadd(...)``): the code that builds a
transaction does not change. A script queued among them (``writes.eval(text, ...)``) runs too, as a Lua function
of the runner (a script cannot call ``EVAL``), when its text was declared with :func:`nestable` first; an
undeclared one is refused before anything is sent.
"""

from __future__ import annotations

import hashlib

import redis

_NESTED: dict[str, str] = {}  # sha1 of a script's text -> the text
_runner_cache: tuple[int, str] | None = None

# ARGV: how many keys must still hold what the caller read, then each key and that value after a '=' ('' for no
# key); how many commands, how many of the last replies to return, then each command as its argument count and its
# arguments. A nested script is ``EVAL <sha1> numkeys keys... args...``. Returns {0} when a key changed (nothing
# ran), else {1, replies...}.
_REPLAY = """
local at = 2
for c = 1, tonumber(ARGV[1]) do
  local value = redis.call('GET', ARGV[at])
  if (value and '=' .. value or '') ~= ARGV[at + 1] then return {0} end
  at = at + 2
end
local n, keep, out = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), {1}
at = at + 2
for c = 1, n do
  local argc = tonumber(ARGV[at])
  local reply
  if ARGV[at + 1] == 'EVAL' then
    local numkeys = tonumber(ARGV[at + 3])
    reply = nested[ARGV[at + 2]]({unpack(ARGV, at + 4, at + 3 + numkeys)}, {unpack(ARGV, at + 4 + numkeys, at + argc)})
  else
    reply = redis.call(unpack(ARGV, at + 1, at + argc))
  end
  if c > n - keep then
    if reply == nil then reply = false end
    out[#out + 1] = reply
  end
  at = at + argc + 1
end
return out
"""


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def nestable(text: str) -> str:
    """Declare a Lua script that transactions run through :func:`execute` may queue (``pipe.eval(text, ...)``);
    returns ``text``, so a module can write ``_SCRIPT = nestable(\"\"\"...\"\"\")``."""
    global _runner_cache
    _NESTED[_sha(text)] = text
    _runner_cache = None
    return text


def runner() -> str:
    """The runner's Lua text: every declared script as a function of ``(KEYS, ARGV)``, then the replay loop."""
    global _runner_cache
    if _runner_cache is None or _runner_cache[0] != len(_NESTED):
        functions = "".join(f"nested['{sha}'] = function(KEYS, ARGV)\n{text.strip()}\nend\n"
                            for sha, text in sorted(_NESTED.items()))
        _runner_cache = (len(_NESTED), "local nested = {}\n" + functions + _REPLAY)
    return _runner_cache[1]


def _argv(unchanged: dict, commands: list[tuple], keep: int) -> list:
    argv: list = [len(unchanged)]
    for key, value in unchanged.items():
        argv += [key, b"" if value is None else b"=" + (value.encode() if isinstance(value, str) else value)]
    argv += [len(commands), keep]
    for args in commands:
        if args[0] == "EVAL":
            sha = _sha(args[1])
            if sha not in _NESTED:
                raise ValueError("a script queued in an atomic transaction must be declared with "
                                 f"inferno_jobs.atomic.nestable(): {args[1][:60]!r}")
            args = ("EVAL", sha, *args[2:])
        argv.append(len(args))
        argv.extend(args)
    return argv


def execute(writes, keep: int = 0, *, unchanged: dict[str, bytes | None] | None = None) -> list:
    """Run the commands queued on ``writes`` (a non-transactional pipeline, used only to queue them) as one
    atomic script call; returns the raw replies of the last ``keep`` commands (Redis types: ints, bytes, None).

    ``unchanged``: string keys read before, with the values read (None: no such key). If any of them holds
    something else by the time the call runs, nothing is written and ``redis.WatchError`` is raised, as a
    ``WATCH`` of those keys would; the caller reads again and retries. Unlike ``WATCH`` it costs no round trip.
    """
    unchanged = unchanged or {}
    argv = _argv(unchanged, [args for args, _options in writes.command_stack], keep)
    writes.reset()
    writes.eval(runner(), 0, *argv)
    replies = writes.execute()[-1]
    if replies[0] == 0:
        raise redis.WatchError(f"changed since read: one of {', '.join(map(str, unchanged))}")
    return replies[1:]

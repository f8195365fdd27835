"""The queued commands of a pipeline run as one server-side script call: atomic like ``MULTI``/``EXEC``, at the
cost of one command.

A transaction of twenty commands costs redis-py and Redis forty replies (each ``QUEUED``, then ``EXEC``'s) and
the client the encoding and parsing of every one; storing a job, or claiming a micro-batch of them, is such a
transaction. :func:`execute` sends the same commands as the arguments of one ``EVAL`` of a small Lua runner that
replays them in order, so Redis runs them as atomically as ``MULTI`` did, and answers once.

Commands are queued as on any pipeline (``writes.set(...)``, ``writes.zadd(...)``): the code that builds a
transaction does not change. A script queued among them (``writes.eval(text, ...)``) runs too, as a Lua function
of the runner (a script cannot call ``EVAL``), when its text was declared with :func:`nestable` first; an
undeclared one is refused before anything is sent.
"""

from __future__ import annotations

import hashlib

_NESTED: dict[str, str] = {}  # sha1 of a script's text -> the text
_runner_cache: tuple[int, str] | None = None

# ARGV: how many commands, how many of the last replies to return, then each command as its argument count and
# its arguments. A nested script is ``EVAL <sha1> numkeys keys... args...``.
_REPLAY = """
local n, keep, at, out = tonumber(ARGV[1]), tonumber(ARGV[2]), 3, {}
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


def _argv(commands: list[tuple], keep: int) -> list:
    argv: list = [len(commands), keep]
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


def execute(writes, keep: int = 0, *, watching=None) -> list:
    """Run the commands queued on ``writes`` (a non-transactional pipeline, used only to queue them) as one
    atomic script call; returns the raw replies of the last ``keep`` commands (Redis types: ints, bytes, None).

    ``watching``: a pipeline that ``WATCH``es keys read before these writes; the call then runs as its
    transaction (``MULTI``, the call, ``EXEC``), so a change to a watched key raises ``redis.WatchError`` and
    nothing is written, as before.
    """
    argv = _argv([args for args, _options in writes.command_stack], keep)
    writes.reset()
    if len(argv) == 2:  # nothing queued
        return []
    if watching is not None:
        watching.multi()
        watching.eval(runner(), 0, *argv)
        return watching.execute()[-1]
    writes.eval(runner(), 0, *argv)
    return writes.execute()[-1]

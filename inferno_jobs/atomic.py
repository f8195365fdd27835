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
undeclared one is refused before anything is sent. As in ``MULTI``, a command that fails when it runs (a wrong
type) does not undo the ones before it; the commands queued here are built by code, not by callers.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

import redis

_NESTED: dict[str, str] = {}  # sha1 of a script's text -> the text
_runner_cache: tuple[int, str] | None = None

# ARGV: how many keys must still hold what the caller read, then each key and that value after a '=' ('' for no
# key); the guard's argument count (0: none), then its sha1, numkeys, keys and args; how many commands, how many of
# the last replies to return, then each command as its argument count and its arguments. A nested script is
# ``EVAL <sha1> numkeys keys... args...``. Returns {0} when a key changed, {2, guard's reply} when the guard
# refused (nothing ran either way), else {1, guard's reply or false, replies...}.
_REPLAY = """
local function call_nested(at, argc)
  local numkeys = tonumber(ARGV[at + 1])
  return nested[ARGV[at]]({unpack(ARGV, at + 2, at + 1 + numkeys)}, {unpack(ARGV, at + 2 + numkeys, at + argc - 1)})
end
local at = 2
for c = 1, tonumber(ARGV[1]) do
  local value = redis.call('GET', ARGV[at])
  if (value and '=' .. value or '') ~= ARGV[at + 1] then return {0} end
  at = at + 2
end
local guard, argc = false, tonumber(ARGV[at])
if argc > 0 then
  guard = call_nested(at + 1, argc)
  if guard[1] == 0 then return {2, guard} end
end
at = at + argc + 1
local n, keep, out = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), {1, guard}
at = at + 2
for c = 1, n do
  argc = tonumber(ARGV[at])
  local reply
  if ARGV[at + 1] == 'EVAL' then
    reply = call_nested(at + 2, argc - 1)
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


@functools.lru_cache(maxsize=64)  # a handful of scripts (and the runner), hashed on every transaction that runs them
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


@dataclass
class Guard:
    """A check that runs first, in the same atomic call, and decides whether the writes run: a :func:`nestable`
    script whose reply is a list, refusing when its first element is 0 (then nothing is written and
    :func:`execute` raises :class:`Refused`). Once run, ``reply`` holds what it answered."""

    script: str
    keys: list = field(default_factory=list)
    args: list = field(default_factory=list)
    reply: list | None = None


class Refused(Exception):
    """The guard refused: nothing was written. ``reply`` is its answer."""

    def __init__(self, reply: list):
        super().__init__(f"refused by the guard: {reply!r}")
        self.reply = reply


def _nested(script: str, keys: list, args: list) -> list:
    sha = _sha(script)
    if sha not in _NESTED:
        raise ValueError("a script run in an atomic transaction must be declared with "
                         f"inferno_jobs.atomic.nestable(): {script[:60]!r}")
    return [sha, len(keys), *keys, *args]


def _argv(unchanged: dict, guard: Guard | None, commands: list[tuple], keep: int) -> list:
    argv: list = [len(unchanged)]
    for key, value in unchanged.items():
        argv += [key, b"" if value is None else b"=" + (value.encode() if isinstance(value, str) else value)]
    checked = _nested(guard.script, guard.keys, guard.args) if guard is not None else []
    argv += [len(checked), *checked, len(commands), keep]
    for args in commands:
        if args[0] == "EVAL":  # EVAL text numkeys keys... args...
            numkeys = int(args[2])
            args = ("EVAL", *_nested(args[1], list(args[3:3 + numkeys]), list(args[3 + numkeys:])))
        argv.append(len(args))
        argv.extend(args)
    return argv


def execute(writes, keep: int = 0, *, unchanged: dict[str, bytes | None] | None = None,
            guard: Guard | None = None) -> list:
    """Run the commands queued on ``writes`` (a non-transactional pipeline, used only to queue them) as one
    atomic script call; returns the raw replies of the last ``keep`` commands (Redis types: ints, bytes, None).

    ``unchanged``: string keys read before, with the values read (None: no such key). If any of them holds
    something else by the time the call runs, nothing is written and ``redis.WatchError`` is raised, as a
    ``WATCH`` of those keys would; the caller reads again and retries. Unlike ``WATCH`` it costs no round trip.

    ``guard``: a :class:`Guard` that runs before the writes and may refuse them (:class:`Refused`).
    """
    unchanged = unchanged or {}
    argv = _argv(unchanged, guard, [args for args, _options in writes.command_stack], keep)
    writes.reset()
    # The runner by its sha1: its text (~4 KB) would be sent, and hashed by Redis, on every call. A server that
    # does not have it cached (restarted, or its scripts flushed) answers NOSCRIPT having run nothing; EVAL then
    # runs it and caches it again.
    text = runner()
    writes.evalsha(_sha(text), 0, *argv)
    try:
        replies = writes.execute()[-1]
    except redis.exceptions.NoScriptError:
        writes.reset()
        writes.eval(text, 0, *argv)
        replies = writes.execute()[-1]
    if replies[0] == 0:
        raise redis.WatchError(f"changed since read: one of {', '.join(map(str, unchanged))}")
    if guard is not None:
        guard.reply = replies[1]
    if replies[0] == 2:
        raise Refused(replies[1])
    return replies[2:]

"""A pipeline's commands run as one script call (inferno_jobs/atomic.py), on a real Redis: its Lua is Redis's own."""

from __future__ import annotations

import threading

import pytest
import redis

from inferno_jobs import atomic

pytestmark = pytest.mark.integration

_BUMP = atomic.nestable("redis.call('INCRBY', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])")
_NOTHING = atomic.nestable("redis.call('SET', KEYS[1], 'x')")  # no return: its reply is nil
# A guard: refuses ({0, count}) once KEYS[1] holds ARGV[1] members.
_AT_MOST = atomic.nestable("""
local n = redis.call('SCARD', KEYS[1])
if n >= tonumber(ARGV[1]) then return {0, n} end
return {1, n}
""")


def test_commands_run_in_order_with_nested_scripts_and_the_last_replies(live_redis):
    writes = live_redis.pipeline(transaction=False)
    writes.set("a", "1", ex=60)
    writes.eval(_BUMP, 1, "a", 41)
    writes.zadd("z", {"m1": 1.5, "m2": 2})
    writes.rpush("l", b"\x00\xffbinary", "two")
    writes.zrank("z", "m2")
    writes.zrank("z", "absent")
    writes.eval(_NOTHING, 1, "b")
    writes.zcard("z")
    replies = atomic.execute(writes, 4)
    assert replies == [1, None, None, 2]  # a nil reply keeps its place
    assert live_redis.get("a") == b"42" and 0 < live_redis.ttl("a") <= 60
    assert live_redis.zscore("z", "m1") == 1.5
    assert live_redis.lrange("l", 0, -1) == [b"\x00\xffbinary", b"two"]
    assert live_redis.get("b") == b"x"
    assert writes.command_stack == []


def test_the_runner_is_sent_by_its_sha1_and_again_as_text_to_a_server_that_lost_it(live_redis):
    def calls():
        stats = live_redis.info("commandstats")
        return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("eval", "evalsha")}

    def bump():
        writes = live_redis.pipeline(transaction=False)
        writes.eval(_BUMP, 1, "counter", 1)
        return atomic.execute(writes, 1)[0]

    bump()  # cached by the server now, whatever ran before
    before = calls()
    assert [bump(), bump()] == [b"2", b"3"]
    assert calls() == {"eval": before["eval"], "evalsha": before["evalsha"] + 2}  # no 4 KB of Lua per call
    live_redis.script_flush()  # as after a restart: the server's script cache is empty
    assert bump() == b"4"  # NOSCRIPT ran nothing; the text is sent once and runs once
    assert calls()["eval"] == before["eval"] + 1
    assert bump() == b"5" and calls()["eval"] == before["eval"] + 1  # by its sha1 again


def test_a_script_that_was_not_declared_is_refused_before_anything_runs(live_redis):
    writes = live_redis.pipeline(transaction=False)
    writes.set("c", "1")
    writes.eval("return 1", 0)
    with pytest.raises(ValueError, match="nestable"):
        atomic.execute(writes)
    assert live_redis.get("c") is None


def test_a_key_changed_since_it_was_read_writes_nothing(live_redis):
    live_redis.set("w", "before")
    read = {"w": live_redis.get("w"), "none": live_redis.get("none")}
    live_redis.set("w", "changed")  # another client, meanwhile
    writes = live_redis.pipeline(transaction=False)
    writes.set("w", "mine")
    writes.set("d", "1")
    with pytest.raises(redis.WatchError):
        atomic.execute(writes, unchanged=read)
    assert live_redis.get("w") == b"changed" and live_redis.get("d") is None
    live_redis.set("none", "")  # a key that appeared (even empty) is a change too
    writes.set("d", "1")
    with pytest.raises(redis.WatchError):
        atomic.execute(writes, unchanged={"w": b"changed", "none": None})
    assert live_redis.get("d") is None


def test_unchanged_keys_let_the_writes_run(live_redis):
    live_redis.set("n", "5")
    writes = live_redis.pipeline(transaction=False)
    writes.incr("n")
    writes.get("n")
    assert atomic.execute(writes, 1, unchanged={"n": b"5", "absent": None}) == [b"6"]


def test_a_guard_decides_in_the_same_call_whether_the_writes_run(live_redis):
    def add(member):
        writes = live_redis.pipeline(transaction=False)
        writes.sadd("members", member)
        writes.scard("members")
        guard = atomic.Guard(_AT_MOST, ["members"], [2])
        return guard, atomic.execute(writes, 1, guard=guard)

    guard, replies = add("a")
    assert guard.reply == [1, 0] and replies == [1]
    guard, replies = add("b")
    assert guard.reply == [1, 1] and replies == [2]
    with pytest.raises(atomic.Refused) as refused:
        add("c")
    assert refused.value.reply == [0, 2]
    assert live_redis.smembers("members") == {b"a", b"b"}


def test_a_guard_must_be_declared_too(live_redis):
    writes = live_redis.pipeline(transaction=False)
    writes.set("e", "1")
    with pytest.raises(ValueError, match="nestable"):
        atomic.execute(writes, guard=atomic.Guard("return {1}"))
    assert live_redis.get("e") is None


def test_no_other_client_sees_half_of_it(live_redis):
    """Atomic like MULTI: a reader polling meanwhile sees both keys or neither, never one."""
    seen, done = set(), threading.Event()

    def read():
        reader = redis.Redis(connection_pool=live_redis.connection_pool)
        while not done.is_set():
            with reader.pipeline() as pipe:  # both read at one instant
                pipe.exists("x1")
                pipe.exists("x2")
                seen.add(tuple(pipe.execute()))

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for _ in range(300):
            writes = live_redis.pipeline(transaction=False)
            writes.set("x1", "1")
            for i in range(50):
                writes.set(f"pad{i}", i)
            writes.set("x2", "1")
            atomic.execute(writes)
            live_redis.delete("x1", "x2")
    finally:
        done.set()
        thread.join()
    assert seen <= {(0, 0), (1, 1)}

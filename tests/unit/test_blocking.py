"""inferno_jobs.blocking: each blocking command waits under its client's socket timeout."""

import time
from types import SimpleNamespace

import redis

from inferno_jobs import blocking


def client(**kwargs):
    return SimpleNamespace(connection_pool=SimpleNamespace(connection_kwargs=kwargs))


def test_each_wait_is_half_the_socket_timeout_at_most():
    assert blocking.longest_block_s(client(socket_timeout=0.4)) == 0.2
    assert blocking.longest_block_s(client()) == 2.5  # redis-py's 5 s default
    assert blocking.longest_block_s(client(socket_timeout=None)) is None
    assert blocking.longest_block_s(redis.Redis.from_url("redis://127.0.0.1:1/0?socket_timeout=3")) == 1.5


def test_slices_add_up_to_the_whole_wait():
    waits = []
    for wait_s in blocking.slices(client(socket_timeout=0.1), 0.2):
        assert 0 < wait_s <= 0.05
        waits.append(wait_s)
        time.sleep(wait_s)
    assert 0.15 <= sum(waits) <= 0.3 and len(waits) >= 4


def test_a_wait_of_nothing_is_still_one_short_command():
    assert list(blocking.slices(client(), 0)) == [blocking.SHORTEST_S]
    assert next(blocking.slices(client(socket_timeout=None), 60)) > 59

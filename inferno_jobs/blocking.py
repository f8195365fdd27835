"""Waiting in Redis for longer than a client's socket timeout: in several blocking commands, each shorter.

redis-py 8 gives a connection a 5 s socket timeout unless its URL sets another (``?socket_timeout=``). A command
that blocks in Redis (``XREAD BLOCK``, ``BLPOP``) longer than that fails with ``TimeoutError: Timeout reading
from socket`` instead of returning empty. A synchronous call waits up to ``INFERNO_SYNC_WAIT_S`` (60 s) and a
model validation a minute, so their waits are split by :func:`slices`.
"""

from __future__ import annotations

import time
from typing import Iterator

REDIS_PY_SOCKET_TIMEOUT_S = 5.0  # redis-py's default when the URL sets none
SHORTEST_S = 0.001  # a blocking command with 0 would block forever


def longest_block_s(client) -> float | None:
    """The longest one blocking command should wait on ``client``: half its socket timeout (the rest is for the
    reply's way back on a busy machine); None for a client without one."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    timeout = kwargs.get("socket_timeout", REDIS_PY_SOCKET_TIMEOUT_S)
    return None if timeout is None else max(SHORTEST_S, timeout / 2)


def slices(client, total_s: float) -> Iterator[float]:
    """The waits (seconds) of blocking commands that together wait ``total_s`` on ``client``, each short enough
    for its socket timeout; at least one, of at least a millisecond. Stop iterating once a command answered."""
    deadline = time.monotonic() + total_s
    longest = longest_block_s(client)
    while True:
        left = max(SHORTEST_S, deadline - time.monotonic())
        yield left if longest is None else min(left, longest)
        if time.monotonic() >= deadline:
            return

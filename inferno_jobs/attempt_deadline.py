"""A whole-attempt deadline for outgoing HTTP requests (webhook deliveries).

``requests``' ``timeout`` bounds each socket operation, not the request: a receiver that sends one header byte a
second never trips it, and holds a delivery thread for as long as it likes. Inside :func:`deadline`, a connection
made with :class:`DeadlineConnection` mixed in registers its socket as it starts reading the answer, and a timer
shuts that socket down when the time is up: the blocked read then fails at once, and :func:`deadline` reports
that it expired.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Iterator

_local = threading.local()


class Attempt:
    """The state of one attempt: its socket (once known) and whether its time ran out."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.expired = False

    def expire(self) -> None:
        with self.lock:
            self.expired = True
            _shut(self.sock)

    def watch(self, sock: socket.socket | None) -> None:
        with self.lock:
            self.sock = sock
            if self.expired:
                _shut(sock)


def _shut(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[Attempt]:
    """Bound the HTTP request made in this block, on this thread, to ``seconds`` in all. ``attempt.expired`` says
    afterwards whether the time ran out (the request then failed with a connection error)."""
    attempt = Attempt()
    timer = threading.Timer(seconds, attempt.expire)
    timer.daemon = True
    _local.attempt = attempt
    timer.start()
    try:
        yield attempt
    finally:
        timer.cancel()
        _local.attempt = None


class DeadlineConnection:
    """Mixed into a urllib3 connection class: inside :func:`deadline`, its socket is shut down when time is up."""

    def getresponse(self, *args, **kwargs):
        attempt = getattr(_local, "attempt", None)
        if attempt is not None:
            attempt.watch(getattr(self, "sock", None))
        return super().getresponse(*args, **kwargs)

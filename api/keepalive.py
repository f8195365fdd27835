"""The API's gunicorn worker: gunicorn's ``gthread`` worker, except that a thread which has answered a keep-alive
request waits on that connection for the client's next request instead of handing it back to the poller.

Stock ``gthread`` returns every kept-alive connection to its main thread after each response: a pipe write to
wake it, registering the socket with the poller, the poller waking when the next request arrives, unregistering it
and submitting it to the thread pool again. On a busy API that is several thread switches and interpreter-lock
handoffs per request, for no work. Here the pool thread keeps the connection and serves its next request in place.
It gives the connection back to the poller, as ``gthread`` does, as soon as another connection waits for a thread
that no idle one will take (so quiet keep-alive clients never hold threads that requests need) or the worker
stops; and it closes it when the client stays quiet for gunicorn's ``--keep-alive`` seconds, as the poller would.

While a request is handled, a client that sends nothing of its body (or reads nothing of the answer) for
``INFERNO_API_CLIENT_STALL_S`` frees the thread: the socket operation times out and the connection is closed.
gunicorn reads bodies with no time limit, so a few clients that send headers and then stall would otherwise hold
every thread. (A client trickling a byte at a time stays within it: a buffering proxy in front stops that,
docs/deployment.md.)
"""

from __future__ import annotations

import select
import threading
import time

from gunicorn.workers.gthread import ThreadWorker

from inferno_jobs.config import Settings

SLICE_S = 0.02  # how often a thread waiting on a quiet connection looks whether another connection needs it


class KeepAliveWorker(ThreadWorker):
    """``--worker-class api.keepalive.KeepAliveWorker``: gthread, serving a busy connection's requests in place."""

    def init_process(self):
        self._submitted = 0  # connections handed to the pool: written by the main thread only
        self._started = 0  # of those, taken by a pool thread
        self._busy = 0  # pool threads serving, or waiting on, a connection
        self._lock = threading.Lock()
        self._stall_s = Settings.from_env().api_client_stall_s or None
        super().init_process()

    def enqueue_req(self, conn):
        self._submitted += 1
        super().enqueue_req(conn)

    def handle(self, conn):
        with self._lock:
            self._started += 1
            self._busy += 1
        try:
            keepalive = super().handle(conn)
            while keepalive is True:
                arrived = self._wait_for_request(conn)
                if arrived is None:  # needed elsewhere, or stopping: the poller takes the connection
                    return True
                if not arrived:  # quiet for the whole keep-alive timeout
                    return False
                keepalive = super().handle(conn)
            return keepalive
        finally:
            with self._lock:
                self._busy -= 1

    def handle_request(self, req, conn):
        # Headers are in; the body and the answer are not: bound every socket operation of the request (a WebSocket
        # lifts it for its own connection, api/websocket.py). The next request's handle() makes it blocking again.
        conn.sock.settimeout(self._stall_s)
        return super().handle_request(req, conn)

    def _threads_needed(self) -> bool:
        """Whether connections wait for a pool thread that no idle one will take."""
        return self._submitted - self._started > self.cfg.threads - self._busy

    def _wait_for_request(self, conn) -> bool | None:
        """True when ``conn``'s next request arrives, False after ``--keep-alive`` seconds without one, None as
        soon as another connection needs this thread or the worker stops."""
        if conn.parser.unreader.buf.getvalue():  # read ahead already: pipelined, or drained with the last body
            return True
        pending = getattr(conn.sock, "pending", None)  # TLS: bytes decrypted already are invisible to poll
        if pending is not None and pending():
            return True
        poller = select.poll()
        poller.register(conn.sock, select.POLLIN)
        deadline = time.monotonic() + self.cfg.keepalive
        while time.monotonic() < deadline:
            if not self.alive or self._threads_needed():
                return None
            if poller.poll(SLICE_S * 1000):
                return True
        return False

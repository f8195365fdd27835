"""``inferno-jobs webhooks listen``: a local webhook receiver that verifies each delivery and prints its event.

For development and for checking a deployment's secret: a verified delivery is answered 204 and printed as one
JSON line; a bad or missing signature is answered 401 and reported on stderr.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from inferno_jobs.webhooks import InvalidSignature, verify

MAX_BODY_BYTES = 10 * 1024 * 1024


def make_server(port: int, secret: str, host: str = "127.0.0.1", out: Callable[[str], None] = print,
                err: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) that verifies webhooks against ``secret``; ``port`` 0 picks a free one."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._answer(413)
                return
            body = self.rfile.read(length)
            try:
                event = verify(dict(self.headers.items()), body, secret)
            except InvalidSignature as exc:
                err(f"401 {self.headers.get('webhook-id', '-')}: {exc.message}")
                self._answer(401)
                return
            data = event.get("data") or {}
            out(json.dumps({"webhook_id": self.headers.get("webhook-id"), "type": event.get("type"),
                            "timestamp": event.get("timestamp"), "id": data.get("id"), "status": data.get("status"),
                            "data": data}))
            self._answer(204)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:  # the printed events are the log
            pass

    return ThreadingHTTPServer((host, port), Handler)


def listen(port: int, secret: str, host: str = "127.0.0.1", out: Callable[[str], None] = print) -> None:
    """Serve until Ctrl-C."""
    server = make_server(port, secret, host, out)
    out(f"listening on http://{host}:{server.server_address[1]}/ (verifying with the given secret; Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

"""``WS /ws``: the seeds' WebSocket protocol (shared/seeds/000), JSON text messages with a ``type``.

Client -> server: ``auth`` ``{"token"}``; ``inference`` ``{"id", "model", "prompt" | "messages", "max_tokens",
..., "stream": true}``; ``cancel`` ``{"id"}``; ``ping``. Server -> client: ``auth`` ``{"authenticated": true}``,
``token`` ``{"id", "token", "index"}``, ``complete`` ``{"id", "job_id", "text", "finish_reason", "usage"}``,
``error`` ``{"id"?, "code", "message"}``, ``pong``.

Each inference is a high-priority streaming job; a thread per request forwards its tokens. ``cancel`` and a
closed socket cancel the socket's unfinished jobs. Each ``inference`` message counts against the key's rate limits
as one ``POST`` would (docs/operations.md#rate-limits): over a limit it gets an ``error`` message with code
``RATE_LIMIT_EXCEEDED`` and ``details.retry_after``, and the socket stays open; so it does when Redis cannot be
reached (``MODEL_NOT_LOADED``, as HTTP's 503). Served by flask-sock
(simple-websocket): under gunicorn each open socket holds one worker thread, so ``inferno-jobs api --threads``
bounds the open sockets per process.

Limits (docs/security.md#inputs): a message over ``INFERNO_WS_MAX_MESSAGE_BYTES`` (1 MiB; never more than
``INFERNO_MAX_REQUEST_BYTES``) closes the socket with close code 1009 "message too big"; simple-websocket counts
as the message arrives, so a larger one is never held whole. With auth required, a socket not authenticated
``INFERNO_WS_AUTH_TIMEOUT_S`` (10 s) after it opens gets an ``AUTHENTICATION_FAILED`` error and is closed (1008),
and so does a socket whose ``auth`` message fails, even one that was authenticated before: a failed re-auth never
keeps working as the previous key.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time

from flask import Blueprint, current_app, g, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed
from wsproto.frame_protocol import CloseReason

from api.body import parse_json
from api.compat_schemas import WebSocketInference, load_request
from api.ratelimit import count_request, limits_for_caller, subject
from api.request_context import services
from api.seed_inference import generation_job
from api.sync_jobs import job_error, stream_tokens
from inferno_jobs.apikey import LOCAL_TENANT
from inferno_jobs.config import Settings
from inferno_jobs.errors import (STORE_FAILURES, AuthenticationFailed, Conflict, InfernoError, InternalError,
                                 InvalidRequest, JobNotFound, StoreUnavailable)
from inferno_jobs.job import Job, JobStatus, isoformat, now

bp = Blueprint("websocket", __name__)
sock = Sock()
log = logging.getLogger(__name__)


LINGER_S = 2.0  # how long a closing socket still reads (and drops) what its client sends
# The longest one receive() waits. simple-websocket 1.1 wakes a waiting receive() before it marks the socket closed
# when it closes it for a too-big message (1009): a receive() without a timeout can then wait forever, holding
# its server thread and never cancelling the socket's jobs. After a slice the next receive() sees the close.
RECEIVE_SLICE_S = 1.0


def max_message_bytes(settings: Settings) -> int:
    """The largest ``WS /ws`` message: ``INFERNO_WS_MAX_MESSAGE_BYTES``, at most ``INFERNO_MAX_REQUEST_BYTES``."""
    return min(settings.ws_max_message_bytes, settings.max_request_bytes)


def server_options(settings: Settings) -> dict:
    """flask-sock's ``SOCK_SERVER_OPTIONS``: simple-websocket closes a socket with 1009 once a message it is
    receiving grows past the limit (it counts a text message's characters; :meth:`Session.run` checks bytes)."""
    return {"max_message_size": max_message_bytes(settings)}


class Session:
    """One WebSocket connection: its tenant, its unfinished jobs, and a lock that serialises sends."""

    def __init__(self, ws, app):
        self.ws = ws
        self.app = app
        self.svc = services()
        self.tenant: str | None = None
        self.key: str | None = None  # the key it authenticated with: checked again on each inference
        self.jobs: dict[str, str] = {}  # request id -> job id, while unfinished
        self.lock = threading.Lock()

    def send(self, message: dict) -> None:
        with self.lock:
            self.ws.send(json.dumps(message, separators=(",", ":")))

    def error(self, exc: InfernoError, request_id: str | None = None) -> None:
        """An ``error`` message; one worth retrying later (Redis unavailable, a full queue) has HTTP's
        ``Retry-After`` as ``retry_after_s``."""
        message = {"type": "error", "id": request_id, "code": exc.code, "message": exc.message, "details": exc.details}
        if exc.retry_after_s is not None:
            message["retry_after_s"] = int(exc.retry_after_s)
        self.send(message)

    def close(self, code: int, reason: str) -> None:
        """Send a close frame (under the send lock: a forwarding thread may be writing a frame)."""
        with self.lock, contextlib.suppress(ConnectionClosed):
            self.ws.close(reason=code, message=reason)

    def refuse(self, exc: AuthenticationFailed, request_id: str | None = None) -> None:
        """An authentication failure ends the socket: the error, then close code 1008 (policy violation)."""
        self.tenant = self.key = None
        with contextlib.suppress(ConnectionClosed):
            self.error(exc, request_id)
        self.close(CloseReason.POLICY_VIOLATION, "authentication failed")

    # -- the receive loop ----------------------------------------------------------------------------------------

    def authenticate_from_headers(self) -> None:
        if not self.svc.settings.auth_enabled:
            self.tenant = LOCAL_TENANT
            return
        header = request.headers.get("Authorization", "")
        key = header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("X-API-Key")
        if key:
            try:
                self.authenticate(key)
            except InfernoError:
                pass  # a bad header key: the client may still send an auth message
            except STORE_FAILURES as exc:  # as for an auth message: an error to retry on, the socket stays
                log.warning("Redis unavailable", extra={"error": repr(exc)})
                self.error(StoreUnavailable.of(exc))

    def authenticate(self, key) -> None:
        """Authenticate with an API key; the request's ``g`` then holds it, as for HTTP (rate limits read it)."""
        record = self.svc.keyring.authenticate(key if isinstance(key, str) else None)
        g.api_key, g.tenant = record, record.tenant
        self.tenant, self.key = record.tenant, key

    def run(self) -> None:
        settings = self.svc.settings
        self.authenticate_from_headers()
        # The deadline runs from the handshake, whatever arrives meanwhile: pings do not keep a keyless socket open.
        auth_deadline = time.monotonic() + settings.ws_auth_timeout_s
        limit = max_message_bytes(settings)
        try:
            while True:
                timeout = RECEIVE_SLICE_S
                if self.tenant is None:
                    left = auth_deadline - time.monotonic()
                    if left <= 0:
                        self.refuse(AuthenticationFailed(
                            f"not authenticated within {settings.ws_auth_timeout_s} s of connecting "
                            "(INFERNO_WS_AUTH_TIMEOUT_S): send {\"type\": \"auth\", \"token\": \"<key>\"} first"))
                        return
                    timeout = min(left, RECEIVE_SLICE_S)
                raw = self.ws.receive(timeout=timeout)
                if raw is None:
                    continue
                # simple-websocket bounds a text message's characters; up to 4 UTF-8 bytes each can exceed the limit
                if isinstance(raw, str) and len(raw) > limit // 4 and len(raw.encode()) > limit:
                    self.close(CloseReason.MESSAGE_TOO_BIG, "Message is too big")
                    return
                try:
                    self.handle(raw)
                except InfernoError as exc:
                    self.error(exc, _request_id(raw))
                except STORE_FAILURES as exc:  # Redis down or frozen: an error to retry on, as HTTP's 503 is
                    log.warning("Redis unavailable", extra={"error": repr(exc)})
                    self.error(StoreUnavailable.of(exc), _request_id(raw))
                if not self.ws.connected:  # closed by handle (a failed auth) or by the client
                    return
        finally:
            self.cancel_all()

    def handle(self, raw) -> None:
        message = parse_json(raw, "messages must be JSON objects")
        if not isinstance(message, dict):
            raise InvalidRequest("messages must be JSON objects")
        kind = message.get("type")
        if kind == "ping":
            self.send({"type": "pong", "id": message.get("id"), "timestamp": isoformat(now())})
        elif kind == "auth":
            if self.svc.settings.auth_enabled:
                try:
                    self.authenticate(message.get("token"))
                except AuthenticationFailed as exc:  # also after an earlier success: never go on as that key
                    self.refuse(exc, message.get("id") if isinstance(message.get("id"), str) else None)
                    return
            else:
                self.tenant = LOCAL_TENANT
            self.send({"type": "auth", "authenticated": True})
        elif kind == "inference":
            self.inference(message)
        elif kind == "cancel":
            self.cancel(message.get("id"))
        else:
            raise InvalidRequest("type must be one of auth, inference, cancel, ping", details={"field": "type"})

    def inference(self, message: dict) -> None:
        if self.tenant is None:
            raise AuthenticationFailed("send {\"type\": \"auth\", \"token\": \"<key>\"} first")
        if self.key is not None:  # a key revoked while the socket is open stops working, as over HTTP
            try:
                self.authenticate(self.key)
            except AuthenticationFailed as exc:
                self.refuse(exc, message.get("id") if isinstance(message.get("id"), str) else None)
                return
        data = load_request(WebSocketInference(), message)
        limits = limits_for_caller()
        if limits is not None and (limits.rpm or limits.rph or limits.tpm):
            count_request(subject(), limits, message)
        request_id = data.get("id") or f"ws_{len(self.jobs)}_{now():.0f}"
        if request_id in self.jobs:
            raise InvalidRequest(f"request {request_id} is still running", details={"field": "id"})
        job = generation_job(data, self.tenant, stream=True)
        self.jobs[request_id] = job.id
        threading.Thread(target=self.forward, args=(request_id, job, data["stream"]), daemon=True,
                         name=f"ws-{job.id}").start()

    def forward(self, request_id: str, job: Job, stream: bool) -> None:
        """Send a job's tokens (when it streams) and its end to the client."""
        with self.app.test_request_context():  # stream_tokens reads the app's services
            pieces = []  # the text so far: a canceled job's complete message carries it
            try:
                for kind, value in stream_tokens(job):
                    if kind == "token":
                        pieces.append(value["token"])
                        if stream:
                            self.send({"type": "token", "id": request_id, **value})
                    elif kind == "end":
                        self.send(self.complete(request_id, value, "".join(pieces)))
                    elif kind == "error":
                        self.error(value, request_id)
            except ConnectionClosed:
                pass
            except STORE_FAILURES as exc:  # Redis down or frozen: the job goes on; the client hears to poll it later
                with contextlib.suppress(ConnectionClosed):
                    self.error(StoreUnavailable.of(exc, {"job_id": job.id},
                                                   f" while following job {job.id}; poll GET /jobs/{job.id}"),
                               request_id)
            except Exception:  # a bug: the client hears it instead of waiting for a message that never comes
                log.exception("forwarding a job's events failed", extra={"job_id": job.id})
                with contextlib.suppress(ConnectionClosed):
                    self.error(InternalError(f"following job {job.id} failed; poll GET /jobs/{job.id} for its "
                                             "result", details={"job_id": job.id}), request_id)
            finally:
                self.jobs.pop(request_id, None)

    @staticmethod
    def complete(request_id: str, job: Job, so_far: str = "") -> dict:
        if job.status is JobStatus.SUCCEEDED:
            result = job.result
            text = result["message"]["content"] if "message" in result else result["text"]
            return {"type": "complete", "id": request_id, "job_id": job.id, "status": job.status.value,
                    "text": text, "finish_reason": result["finish_reason"], "usage": result["usage"]}
        if job.status is JobStatus.CANCELED:
            return {"type": "complete", "id": request_id, "job_id": job.id, "status": job.status.value,
                    "text": so_far, "finish_reason": "canceled", "usage": None}
        exc = job_error(job)
        return {"type": "error", "id": request_id, "code": exc.code, "message": exc.message, "details": exc.details}

    def cancel(self, request_id) -> None:
        job_id = self.jobs.get(request_id) if isinstance(request_id, str) else None
        if job_id is None:
            raise InvalidRequest(f"no running request {request_id!r} on this connection", details={"field": "id"})
        with contextlib.suppress(Conflict, JobNotFound):  # it ended meanwhile: its complete message is on its way
            self.svc.store.cancel(job_id)

    def cancel_all(self) -> None:
        """Cancel the closed socket's unfinished jobs: nobody reads them now. With Redis unreachable they run to
        their end instead (a job is never lost) and the socket still closes as it would have."""
        for job_id in list(self.jobs.values()):
            try:
                with contextlib.suppress(Conflict, JobNotFound):
                    self.svc.store.cancel(job_id)
            except STORE_FAILURES as exc:
                log.warning("a closed socket's jobs were left to run: Redis unavailable",
                            extra={"error": repr(exc), "job_ids": list(self.jobs.values())})
                return


def _request_id(raw) -> str | None:
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        value = json.loads(raw).get("id")
        return value if isinstance(value, str) else None
    return None


class LingeringSocket:
    """gunicorn's connection socket, as simple-websocket uses it: ``close()`` half-closes, then reads and drops
    what the client still sends (for at most :data:`LINGER_S`) before it closes.

    A client in the middle of an oversize message then reads the 1009 close frame: closing at once with its data
    unread makes the kernel send a TCP reset, and the client's kernel drops the close frame with it. (werkzeug's
    socket is not wrapped: its server half-closes and closes the connection itself after the handler returns.)
    """

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def close(self) -> None:
        deadline = time.monotonic() + LINGER_S
        with contextlib.suppress(OSError):  # socket.timeout included
            self._sock.shutdown(socket.SHUT_WR)
            while (remaining := deadline - time.monotonic()) > 0:
                self._sock.settimeout(remaining)
                if not self._sock.recv(65536):
                    break
        self._sock.close()


@bp.before_request
def _linger_on_close() -> None:
    # Before flask-sock builds its simple_websocket.Server from this environ.
    if "gunicorn.socket" in request.environ:
        sock = request.environ["gunicorn.socket"]
        sock.settimeout(None)  # an open socket may stay quiet: not the stall limit of an HTTP request's body
        request.environ["gunicorn.socket"] = LingeringSocket(sock)


@sock.route("/ws", bp=bp)
def ws_endpoint(ws):
    """The WebSocket endpoint (``ws://host/ws``)."""
    try:
        Session(ws, current_app._get_current_object()).run()
    finally:
        # Returning lets gunicorn close the connection: first let the receiving thread finish its closing
        # handshake and linger (bounded: a client that never answers a close frame is not waited for).
        ws.thread.join(LINGER_S + 1)

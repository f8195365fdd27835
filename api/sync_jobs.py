"""Synchronous and streaming calls over jobs: every /v1 and seed call is a high-priority job the API waits for.

Waiting reads the job's event stream (``inferno_jobs/events.py``) with a blocking ``XREAD``: a synchronous call
returns as soon as the job's terminal status is written, and answers 504 ``TIMEOUT`` with the job id past
``INFERNO_SYNC_WAIT_S`` (the job goes on; poll ``GET /jobs/<id>``). A streaming call follows the same stream and
forwards the tokens as the worker publishes them; if its client goes away, the job is canceled.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import time
from typing import Iterator

import redis
from flask import Response, stream_with_context

from api.jobs import submit
from api.request_context import services
from inferno_jobs.errors import (ERRORS_BY_CODE, STORE_FAILURES, Conflict, InfernoError, InternalError,
                                 JobNotFound, ModelNotFound, StoreUnavailable, Timeout)
from inferno_jobs.events import STATUS, Event
from inferno_jobs.job import Job, JobStatus, JobType, Priority
from inferno_jobs.store import JobStore

log = logging.getLogger(__name__)


def submit_now(data: dict, owner: str, *, stream: bool = False) -> Job:
    """Create a high-priority job for a caller who waits for it (``stream``: it publishes its tokens)."""
    data = {**data, "priority": Priority.HIGH}
    if stream:
        data["input"] = {**data["input"], "stream": True}
    job, _ = submit(data, owner=owner)
    return job


def find_model(name: str, job_type: JobType):
    """The repository model ``name`` serving ``job_type``: 404 "model not found" (``param: model``) otherwise."""
    models = services().models
    try:
        model = models.get(name)
    except ModelNotFound:
        raise ModelNotFound(f"model not found: {name!r}", details={"field": "model", "available": models.names()}) \
            from None
    model.check_serves(job_type)
    return model


def wait(jobs: list[Job], wait_s: float | None = None) -> list[Job]:
    """Wait until every job in ``jobs`` has ended; returns them as they ended.

    Raises :class:`Timeout` (504, with the job ids) when ``wait_s`` (default ``INFERNO_SYNC_WAIT_S``) runs out.
    """
    svc = services()
    wait_s = svc.settings.sync_wait_s if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    positions = {job.id: "0" for job in jobs if not job.status.terminal}
    while positions:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        # Slices of at most 5 s: a stream that was lost (a record older than event streams) is noticed below.
        try:
            events = svc.store.events.read(positions, block_ms=min(left, 5) * 1000)
        except STORE_FAILURES as exc:  # the jobs go on: say which, so the caller can poll them
            ids = sorted(positions)
            raise StoreUnavailable.of(exc, details={"job_id": ids[0], "job_ids": ids},
                                      what=f" while waiting; poll GET /jobs/{ids[0]} for the result") from exc
        for job_id, event in events:
            positions[job_id] = event.id
        done = {job_id for job_id, event in events if event.terminal}
        if not events:
            done = {job_id for job_id in positions if svc.store.get(job_id).status.terminal}
        for job_id in done:
            positions.pop(job_id, None)
    if positions:
        ids = sorted(positions)
        raise Timeout(f"job{'s' if len(ids) > 1 else ''} {', '.join(ids)} did not finish within {wait_s} s; "
                      f"poll GET /jobs/<id> for the result", details={"job_id": ids[0], "job_ids": ids})
    return [svc.store.get(job.id) for job in jobs]


def job_error(job: Job) -> InfernoError:
    """The error a caller gets for a job that did not succeed, with the job id in its details."""
    error = job.error or {}
    details = {"job_id": job.id, "status": job.status.value}
    if isinstance(error.get("details"), dict):
        details = {**error["details"], **details}
    message = error.get("message") or f"job {job.id} ended {job.status.value}"
    if job.status is JobStatus.CANCELED:
        return Conflict(f"job {job.id} was canceled", details=details)
    cls = ERRORS_BY_CODE.get(error.get("code"), InternalError)
    return cls(message, details=details)


def result_of(job: Job) -> dict:
    """The result of a succeeded job; raises the job's error otherwise."""
    if job.status is JobStatus.SUCCEEDED:
        return job.result
    raise job_error(job)


def follow(store: JobStore, job_id: str, *, idle_s: float, tick_s: float, after: str = "0") -> Iterator[Event | None]:
    """The events of ``job_id`` from its start (or those after the event id ``after``) until its terminal status;
    ``None`` after each quiet ``tick_s``.

    Raises :class:`Timeout` after ``idle_s`` with no event, and :class:`InternalError` when its events cannot be
    read (Redis unreachable); the job goes on either way, and its id is in the error. So every stream ends with an
    error its client can read rather than a dropped connection.
    """
    try:
        yield from _follow(store, job_id, idle_s=idle_s, tick_s=tick_s, after=after)
    except redis.RedisError as exc:
        log.warning("following a job's events failed", extra={"job_id": job_id, "error": repr(exc)})
        raise InternalError(f"following job {job_id} failed ({exc.__class__.__name__}); poll GET /jobs/{job_id} "
                            "for its result", details={"job_id": job_id}) from exc


def _follow(store: JobStore, job_id: str, *, idle_s: float, tick_s: float, after: str) -> Iterator[Event | None]:
    last, quiet_since = after, time.monotonic()
    while True:
        events = store.events.read({job_id: last}, block_ms=tick_s * 1000)
        if not events:
            job = store.get(job_id)
            if job.status.terminal:  # its stream is gone (expired): the record still tells the end
                yield Event("0-0", STATUS, {"id": job_id, "status": job.status.value,
                                            "at": job.finished_at or time.time()})
                return
            if time.monotonic() - quiet_since > idle_s:
                raise Timeout(f"job {job_id} sent nothing for {idle_s:g} s; follow it at GET /jobs/{job_id}/events",
                              details={"job_id": job_id, "status": job.status.value})
            yield None
            continue
        quiet_since = time.monotonic()
        for _, event in events:
            last = event.id
            yield event
            if event.terminal:
                return


def sse(data, event: str | None = None, event_id: str | None = None) -> str:
    """One Server-Sent Event; ``data`` is JSON-encoded unless it is already a string. With ``event_id``, a client
    that reconnects sends it back as ``Last-Event-ID``."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"id: {event_id}\n" if event_id else "") + (f"event: {event}\n" if event else "") + f"data: {text}\n\n"


KEEPALIVE = ": keepalive\n\n"


def sse_response(body: Iterator[str], job_id: str | None = None, *, cancel_on_close: bool = True) -> Response:
    """A streaming ``text/event-stream`` response that no proxy should buffer.

    If the server stops sending before ``body`` ends (the client went away: the write failed and the server
    closed the response), the job ``job_id`` is canceled when ``cancel_on_close``.
    """
    if job_id and cancel_on_close:
        body = _cancel_unless_finished(body, services().store, job_id)
    response = Response(stream_with_context(body), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    if job_id:
        response.headers["X-Job-ID"] = job_id
    return response


def _cancel_unless_finished(body: Iterator[str], store: JobStore, job_id: str) -> Iterator[str]:
    finished = False
    try:
        yield from body
        finished = True
    finally:
        if not finished:
            with contextlib.suppress(Conflict, JobNotFound):
                store.cancel(job_id)


def started_tokens(job: Job) -> Iterator[tuple[str, object]]:
    """:func:`stream_tokens`, read up to its first piece, quiet tick or end before the response starts: a job that
    fails before its first piece (a prompt over the model's context, a template error) raises its error here, so the
    call answers that error's HTTP status, as OpenAI's API does, instead of 200 and an error event."""
    items = stream_tokens(job)
    first = next(items)
    kind, value = first
    if kind == "error" or (kind == "end" and value.status not in (JobStatus.SUCCEEDED, JobStatus.CANCELED)):
        items.close()
        raise value if kind == "error" else job_error(value)
    return itertools.chain([first], items)


def stream_tokens(job: Job) -> Iterator[tuple[str, object]]:
    """What a streaming call forwards: ``("token", {"token", "index"})`` per piece, ``("keepalive", None)`` on
    quiet ticks, then ``("end", job)`` with the finished job, or ``("error", InfernoError)``."""
    svc = services()
    store, settings = svc.store, svc.settings
    events = follow(store, job.id, idle_s=settings.sync_wait_s, tick_s=max(0.05, settings.sse_keepalive_s))
    with contextlib.closing(events):
        try:
            for event in events:
                if event is None:
                    yield "keepalive", None
                elif event.kind == "token":
                    yield "token", event.data
                elif event.terminal:
                    yield "end", store.get(job.id)
                    return
        except InfernoError as exc:
            yield "error", exc

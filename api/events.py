"""``GET /jobs/<id>/events``: a job's status changes (and, for a streaming job, its tokens) as Server-Sent Events.

Any client of the job's tenant may follow any job, from its start: ``event: status`` ``{"id", "status", "at"}``
per change, ``event: token`` ``{"token", "index"}`` per generated piece, and finally ``event: done`` with the job
object. Each event but ``done`` has an ``id:`` (its Redis stream id), so a client that reconnects with
``Last-Event-ID`` gets only what it missed. Following never changes the job: a follower that disconnects cancels
nothing.
"""

from __future__ import annotations

import re

from flask import Blueprint, request

from api.jobs import job_body
from api.request_context import services, tenant
from api.sync_jobs import KEEPALIVE, follow, sse, sse_response
from inferno_jobs.errors import InfernoError, InvalidRequest

bp = Blueprint("events", __name__)


_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")  # a Redis stream entry id


@bp.get("/jobs/<job_id>/events")
def job_events(job_id: str):
    """Stream the job's events until it ends; 404 ``JOB_NOT_FOUND`` for unknown or foreign ids. A reconnecting
    client's ``Last-Event-ID`` (or ``?last_event_id=``) resumes after that event."""
    svc = services()
    job = svc.store.get(job_id, tenant())
    after = request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or "0"
    if after != "0" and not _EVENT_ID.match(after):
        raise InvalidRequest("Last-Event-ID must be an event's id, as its id: line gave it",
                             details={"field": "Last-Event-ID"})
    # Idle limit: a queued job may wait a long time; the stream stays open (with keepalives) for its whole ttl.
    idle_s = job.ttl_s + job.timeout_s

    def body():
        events = follow(svc.store, job.id, idle_s=idle_s, tick_s=max(0.05, svc.settings.sse_keepalive_s),
                        after=after)
        try:
            for event in events:
                if event is None:
                    yield KEEPALIVE
                    continue
                # "0-0": the end read from the job record once its stream expired; not a place to resume from
                yield sse(event.data, event.kind, event.id if event.id != "0-0" else None)
                if event.terminal:
                    yield sse(job_body(svc.store.get(job.id)), "done")
        except InfernoError as exc:
            yield sse({"code": exc.code, "message": exc.message, "details": exc.details}, "error")
        finally:
            events.close()

    return sse_response(body(), job.id, cancel_on_close=False)

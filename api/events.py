"""``GET /jobs/<id>/events``: a job's status changes (and, for a streaming job, its tokens) as Server-Sent Events.

Any client of the job's tenant may follow any job, from its start: ``event: status`` ``{"id", "status", "at"}``
per change, ``event: token`` ``{"token", "index"}`` per generated piece, and finally ``event: done`` with the job
object. Following never changes the job: a follower that disconnects cancels nothing.
"""

from __future__ import annotations

from flask import Blueprint

from api.jobs import job_body
from api.request_context import services, tenant
from api.sync_jobs import KEEPALIVE, follow, sse, sse_response
from inferno_jobs.errors import InfernoError

bp = Blueprint("events", __name__)


@bp.get("/jobs/<job_id>/events")
def job_events(job_id: str):
    """Stream the job's events until it ends; 404 ``JOB_NOT_FOUND`` for unknown or foreign ids."""
    svc = services()
    job = svc.store.get(job_id, tenant())
    # Idle limit: a queued job may wait a long time; the stream stays open (with keepalives) for its whole ttl.
    idle_s = job.ttl_s + job.timeout_s

    def body():
        events = follow(svc.store, job.id, idle_s=idle_s, tick_s=max(0.05, svc.settings.sse_keepalive_s))
        try:
            for event in events:
                if event is None:
                    yield KEEPALIVE
                    continue
                yield sse(event.data, event.kind)
                if event.terminal:
                    yield sse(job_body(svc.store.get(job.id)), "done")
        except InfernoError as exc:
            yield sse({"code": exc.code, "message": exc.message, "details": exc.details}, "error")
        finally:
            events.close()

    return sse_response(body(), job.id, cancel_on_close=False)

"""``POST /webhooks/ingest/<source>``: Standard-Webhooks-signed events from other systems become jobs.

No API key: the signature authenticates the source (inferno_jobs/ingest.py), and the job belongs to the source's
tenant. The order matters: the signature is checked before anything is counted or stored, so a forger can neither
use up a source's rate limit nor burn a webhook-id; the webhook-id is claimed before the job is created, so two
concurrent deliveries of one message make one job; and a claim whose job was not created (bad payload, 429, 503)
is released, so the sender's retry is handled rather than refused as a replay. See docs/webhooks.md#inbound-webhooks.
"""

from __future__ import annotations

import logging

from flask import Blueprint, g, jsonify, request, url_for
from marshmallow import Schema, fields

from api.body import load, parse_json
from api.jobs import job_body, submit
from api.ratelimit import count_request
from api.request_context import services
from inferno_jobs.errors import InfernoError, InvalidRequest, NotFound, RateLimitExceeded
from inferno_jobs.ingest import DeliveryRefused, Replayed, ReplayGuard, SourceRegistry, job_request, verify
from inferno_jobs.metrics import INGEST_WEBHOOKS
from inferno_jobs.ratelimit import Limits
from inferno_jobs.schemas import JobRequest, JobResponse

bp = Blueprint("ingest", __name__)
log = logging.getLogger(__name__)

UNKNOWN_SOURCE = "(unknown)"  # the metrics label of a name that is no source: never a label per forged name


class IngestEvent(Schema):
    """An inbound event: ``{"type": "job.create", "data": <job request>}``, or the bare job request."""

    type = fields.String(metadata={"description": "job.create (may be left out)"})
    timestamp = fields.String(metadata={"description": "when the sender made the event (not used)"})
    data = fields.Nested(JobRequest, required=True)


class IngestResponse(Schema):
    """What an accepted inbound event answers."""

    job = fields.Nested(JobResponse, required=True)
    webhook_id = fields.String(required=True)
    source = fields.String(required=True)


_ERRORS = (400, 401, 404, 409, 413, 429, 503)
ROUTES: dict = {
    "/webhooks/ingest/{source}": {
        "post": ("Create a job from a Standard-Webhooks-signed event of an inbound source (no API key: the "
                 "webhook-signature authenticates it)", "IngestEvent", 202, "IngestResponse", _ERRORS),
    },
    "/webhooks/ingest": {
        "post": ("The same, naming the source with ?source=", "IngestEvent", 202, "IngestResponse", _ERRORS),
    },
}
SCHEMAS: dict = {"IngestEvent": IngestEvent, "IngestResponse": IngestResponse}


def _count(source: str, outcome: str, reason: str = "") -> None:
    services().store.metrics.inc(INGEST_WEBHOOKS, (source, outcome, reason))


def _refusal_reason(exc: InfernoError) -> str:
    if isinstance(exc, (InvalidRequest, NotFound)):  # a bad payload, an unknown model
        return "invalid_payload"
    if isinstance(exc, RateLimitExceeded):
        return "rate_limited"
    return "unavailable" if exc.status >= 500 else "rejected"


@bp.post("/webhooks/ingest")
@bp.post("/webhooks/ingest/<source>")
def ingest(source: str | None = None):
    """Verify one inbound event and create its job: 202 ``{job, webhook_id, source}``."""
    svc = services()
    name = source or request.args.get("source", "")
    body = request.get_data(cache=True)  # the raw bytes: the signature covers them exactly (413 over the limit)
    record = SourceRegistry(svc.redis, svc.settings).get(name)
    try:
        verify(record, request.headers, body)
    except DeliveryRefused as exc:
        _count(record.name if record else UNKNOWN_SOURCE, "refused", exc.reason)
        log.warning("inbound webhook refused", extra={"source": name[:64], "reason": exc.reason,
                                                      "webhook_id": request.headers.get("webhook-id", "")[:128]})
        raise
    webhook_id = request.headers["webhook-id"]
    g.tenant = record.tenant  # the job's owner, and whose concurrent-jobs limit applies (api/ratelimit.py)
    guard = ReplayGuard(svc.redis, svc.settings)
    token = None
    try:
        wanted = job_request(_parse(body), record, webhook_id)
        settings = svc.settings
        limits = Limits.from_settings(settings)
        g.rate_limits = limits
        # A source is counted like one API key of its tenant, and only once it has proved who it is.
        if (settings.auth_enabled or settings.rate_limit_by_ip) and (limits.rpm or limits.rph or limits.tpm):
            count_request(f"ingest:{record.name}", limits, wanted)
        token = guard.claim(record.name, webhook_id)
        data = load(JobRequest(), wanted)
        job, _ = submit(data, owner=record.tenant)
    except Replayed:
        _count(record.name, "refused", "replay")
        raise
    except InfernoError as exc:
        if token is not None:
            guard.release(record.name, webhook_id, token)
        _count(record.name, "refused", _refusal_reason(exc))
        raise
    except BaseException:
        if token is not None:
            guard.release(record.name, webhook_id, token)
        raise
    guard.accept(record.name, webhook_id, job.id)
    _count(record.name, "accepted")
    log.info("inbound webhook accepted", extra={"source": record.name, "webhook_id": webhook_id, "job_id": job.id})
    response = jsonify(IngestResponse().dump({"job": job_body(job), "webhook_id": webhook_id,
                                              "source": record.name}))
    response.status_code = 202
    response.headers["Location"] = url_for("jobs.get_job", job_id=job.id)
    return response


def _parse(body: bytes):
    return parse_json(body, "the event must be valid JSON" if body else "the event is empty; send JSON")

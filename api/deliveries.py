"""``/jobs/<id>/deliveries``: a job's webhook delivery attempts, and replaying one of them (a job's or a batch's:
``/batches/<id>/deliveries/<n>/replay``; the batch's log is listed in api/batches.py)."""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify
from marshmallow import Schema, fields

from api.request_context import services, tenant
from inferno_jobs.batchstore import BatchStore
from inferno_jobs.delivery import DeliveryLog, dispatch_outbox, send_delivery
from inferno_jobs.errors import Conflict, NotFound

log = logging.getLogger(__name__)

bp = Blueprint("deliveries", __name__)


class DeliveryAttempt(Schema):
    """One delivery attempt of a webhook event."""

    n = fields.Integer(metadata={"description": "position in this job's (or batch's) delivery log, from 1"})
    attempt = fields.Integer(metadata={"description": "the try of this event (1 = first; replays start again)"})
    webhook_id = fields.String(metadata={"description": "the webhook-id header: the event's id"})
    event = fields.String(metadata={"description": "event type, e.g. job.succeeded"})
    url = fields.String()
    replay_of = fields.Integer(allow_none=True, metadata={"description": "n of the attempt this replays"})
    attempted_at = fields.String()
    status_code = fields.Integer(allow_none=True)
    duration_ms = fields.Float()
    error = fields.String(allow_none=True)
    outcome = fields.String(metadata={"description": "delivered | retrying | failed"})
    next_attempt_at = fields.String(allow_none=True)


class DeliveryList(Schema):
    """``GET /jobs/<id>/deliveries`` (with ``job_id``) and ``GET /batches/<id>/deliveries`` (with ``batch_id``)."""

    object = fields.Constant("list")
    job_id = fields.String(metadata={"description": "a job's log only"})
    batch_id = fields.String(metadata={"description": "a batch's log only"})
    data = fields.List(fields.Nested(DeliveryAttempt))


class ReplayResponse(Schema):
    """``POST /jobs/<id>/deliveries/<n>/replay`` or ``/batches/<id>/...``: the replay is queued."""

    object = fields.Constant("delivery_replay")
    job_id = fields.String(metadata={"description": "a job's replay only"})
    batch_id = fields.String(metadata={"description": "a batch's replay only"})
    webhook_id = fields.String()
    event = fields.String()
    replay_of = fields.Integer()
    status = fields.Constant("queued")


SCHEMAS = {"DeliveryList": DeliveryList, "ReplayResponse": ReplayResponse}


def dispatch_webhooks() -> None:
    """Hand waiting webhook events to the webhooks queue now (after a terminal move made by the API).

    A failure is only logged: the reconciler sends what is left, and the request that caused it succeeded.
    """
    svc = services()
    try:
        dispatch_outbox(svc.store, svc.celery)
    except Exception:
        log.exception("webhook dispatch failed; the reconciler will retry it")


def _log() -> DeliveryLog:
    svc = services()
    return DeliveryLog(svc.redis, svc.store.keys)


@bp.get("/jobs/<job_id>/deliveries")
def list_deliveries(job_id: str):
    """Every webhook delivery attempt of a job, oldest first (404 for another tenant's job)."""
    job = services().store.get(job_id, tenant())
    return jsonify(DeliveryList().dump({"job_id": job.id, "data": _log().list(job.id)}))


def _replay(kind: str, subject_id: str, webhook: dict | None, n: int):
    """Queue attempt ``n``'s event of a job or batch again; the delivery sends the body kept for its webhook-id."""
    attempt = _log().get(subject_id, n)
    if attempt is None:
        raise NotFound(f"{kind} {subject_id} has no delivery attempt {n}", details={"n": n})
    if not webhook:
        raise Conflict(f"{kind} {subject_id} has no webhook")
    event = {"id": attempt["webhook_id"], "type": attempt["event"], f"{kind}_id": subject_id,
             "timestamp": attempt["event_timestamp"]}
    send_delivery(services().celery, event, replay_of=n)
    response = jsonify(ReplayResponse().dump({f"{kind}_id": subject_id, "webhook_id": event["id"],
                                              "event": event["type"], "replay_of": n}))
    response.status_code = 202
    return response


@bp.post("/jobs/<job_id>/deliveries/<int:n>/replay")
def replay_delivery(job_id: str, n: int):
    """Send attempt ``n``'s event again, with the same ``webhook-id`` and body: 202, delivered in the background."""
    job = services().store.get(job_id, tenant())
    return _replay("job", job.id, job.webhook, n)


@bp.post("/batches/<batch_id>/deliveries/<int:n>/replay")
def replay_batch_delivery(batch_id: str, n: int):
    """As for a job: attempt ``n`` of a batch's webhook, again (404 for another tenant's batch)."""
    svc = services()
    batch = BatchStore(svc.redis, svc.settings).get(batch_id, tenant())
    return _replay("batch", batch.id, batch.webhook, n)

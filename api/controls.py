"""Operator controls: retry a job, see and steer the queues, see the workers (docs/operations.md#queue-controls).

``POST /jobs/<id>/retry`` is the tenant's own (its job, 404 for another tenant's). Pausing, resuming and purging
queues need an admin key (``inferno-jobs keys create --admin``) or an operator's login token (``POST /auth/login``);
anyone may when auth is disabled. ``GET /queues`` and ``GET /workers`` need any valid key or an operator token.
"""

from __future__ import annotations

import json

from flask import Blueprint, g, jsonify
from marshmallow import Schema, fields

from api.auth import operator, require_operator_or_key
from api.deliveries import dispatch_webhooks
from api.health import workers_online
from api.jobs import job_body
from api.ratelimit import check_capacity
from api.request_context import services, tenant
from inferno_jobs.control import QueueControl
from inferno_jobs.errors import AuthorizationFailed, InternalError
from inferno_jobs.metrics import worker_stats

bp = Blueprint("controls", __name__)


class QueueInfo(Schema):
    """One job queue."""

    name = fields.String()
    pool = fields.String()
    priority = fields.String()
    depth = fields.Integer()
    oldest_job_age_s = fields.Float(allow_none=True)
    consumers = fields.Integer()
    workers = fields.List(fields.String())
    paused = fields.Boolean()


class QueueList(Schema):
    """``GET /queues``."""

    queues = fields.List(fields.Nested(QueueInfo))


class QueueAction(Schema):
    """The answer to pause, resume and purge: the queue, and for a purge the jobs it canceled."""

    queue = fields.Nested(QueueInfo)
    canceled = fields.Integer()
    canceled_job_ids = fields.List(fields.String())


class WorkerInfo(Schema):
    """One worker node, as the seeds' ``/services`` and ``/stats`` show a backend."""

    name = fields.String()
    host = fields.String()
    pool = fields.String()
    queues = fields.List(fields.String())
    models = fields.List(fields.String())
    healthy = fields.Boolean()
    last_seen = fields.Float(allow_none=True)
    jobs_done = fields.Integer()
    errors = fields.Integer()
    mean_run_time_s = fields.Float(allow_none=True)


class WorkerList(Schema):
    """``GET /workers``."""

    workers = fields.List(fields.Nested(WorkerInfo))
    total = fields.Integer()
    healthy = fields.Integer()


SCHEMAS = {"QueueInfo": QueueInfo, "QueueList": QueueList, "QueueAction": QueueAction, "WorkerInfo": WorkerInfo,
           "WorkerList": WorkerList}


def require_admin() -> None:
    """Raises 403 ``AUTHORIZATION_FAILED`` unless the caller is an operator with a login token
    (docs/security.md#operator-logins) or holds an admin key (anyone when auth is disabled)."""
    if not services().settings.auth_enabled or operator() is not None:
        return
    tenant()
    record = g.get("api_key")
    if record is None or not record.admin:
        raise AuthorizationFailed("operator controls need an admin key (inferno-jobs keys create --admin) or an "
                                  "operator login (POST /auth/login)")


def _control() -> QueueControl:
    return QueueControl(services().store)


@bp.post("/jobs/<job_id>/retry")
def retry_job(job_id: str):
    """Run a ``failed``, ``expired`` or ``timed_out`` job again: same id, attempt history kept, 202; 409 otherwise."""
    owner = tenant()
    svc = services()
    check_capacity(svc.store.get(job_id, owner).pool, owner)
    job = svc.store.retry(job_id, owner)
    from workers.celery_app import enqueue

    try:
        enqueue(svc.celery, job)
    except Exception as exc:
        # The job is queued and indexed; the reconciler sends it again after INFERNO_RESEND_AFTER_S.
        raise InternalError(f"the job was queued again but its message could not be sent "
                            f"({exc.__class__.__name__}); it will be sent again later", retry_after_s=5) from exc
    response = jsonify(job_body(job))
    response.status_code = 202
    return response


@bp.get("/queues")
def list_queues():
    """Every job queue: depth, age of its oldest job, consumers, paused."""
    require_operator_or_key()
    return jsonify(QueueList().dump({"queues": _control().describe_all(workers_online())}))


def _queue_action(name: str, action: str):
    require_admin()
    control = _control()
    canceled: list[str] = []
    if action == "pause":
        control.pause(name)
    elif action == "resume":
        control.resume(name)
    else:
        canceled = control.purge(name)
        dispatch_webhooks()  # their job.canceled events go out now
    queue = control.describe(name, workers_online()) if name.count(".") == 2 and name != "inferno.webhooks" \
        else {"name": name, "paused": name in control.paused()}
    return jsonify(QueueAction().dump({"queue": queue, "canceled": len(canceled), "canceled_job_ids": canceled}))


@bp.post("/queues/<name>/pause")
def pause_queue(name: str):
    """Workers stop taking jobs from the queue (within about a second); its jobs stay queued."""
    return _queue_action(name, "pause")


@bp.post("/queues/<name>/resume")
def resume_queue(name: str):
    """Workers take jobs from the queue again."""
    return _queue_action(name, "resume")


@bp.post("/queues/<name>/purge")
def purge_queue(name: str):
    """Cancel every job queued in the queue (each gets its ``job.canceled`` webhook); running jobs go on."""
    return _queue_action(name, "purge")


@bp.get("/workers")
def list_workers():
    """Every worker node that sent a heartbeat: pool, queues, models, healthy, jobs done, errors, mean run time."""
    require_operator_or_key()
    nodes = worker_nodes()
    return jsonify(WorkerList().dump({"workers": nodes, "total": len(nodes),
                                      "healthy": sum(1 for n in nodes if n["healthy"])}))


def worker_nodes() -> list[dict]:
    """Every worker node that sent a heartbeat, by name, as ``WorkerInfo`` (also the seeds' ``/services`` and
    ``/stats``, api/seed_services.py)."""
    from api.models import worker_reports  # api.models imports this module

    svc = services()
    online = {w["hostname"] for w in workers_online()}
    reports = worker_reports()
    nodes = []
    for raw in svc.redis.hgetall(svc.store.keys.workers()).values():
        beat = json.loads(raw)
        name = beat.get("hostname", "")
        nodes.append({"name": name, "host": name.partition("@")[2] or name, "pool": beat.get("pool"),
                      "queues": beat.get("queues") or [], "healthy": name in online,
                      "last_seen": beat.get("last_seen"),
                      **worker_stats(svc.redis, svc.store.keys, name, reports=reports)})
    nodes.sort(key=lambda n: n["name"])
    return nodes


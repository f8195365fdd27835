"""``/jobs``: submit, read, list and cancel jobs."""

from __future__ import annotations

import hashlib
import json

import redis
from flask import Blueprint, g, jsonify, request, url_for

from api import cache as result_cache
from api.body import json_body, load
from api.deliveries import dispatch_webhooks
from api.ratelimit import Capacity
from api.request_context import request_id, services, tenant
from inferno_jobs import atomic, importance
from inferno_jobs.errors import ContextLengthExceeded, InternalError, InvalidRequest, StoreUnavailable
from inferno_jobs.job import Job, JobType
from inferno_jobs.schemas import JobList, JobListQuery, JobRequest, shared
from inferno_jobs.ssrf import NetworkGuard

bp = Blueprint("jobs", __name__)


def position_of(job: Job) -> int | None:
    """A job's queue position: for a job just created, the one read as it was stored; else the live one."""
    if job.created_position is not None:
        return job.created_position
    return services().store.queue_position(job)


def job_body(job: Job) -> dict:
    """The job object, with its queue position: :meth:`Job.to_api` builds exactly what ``JobResponse``
    documents (tests/unit/test_job_response.py checks that dumping it through the schema changes nothing),
    so it is not copied through the schema on every request."""
    return job.to_api(position_of(job))


def check_context(model, max_tokens: int | None) -> None:
    """A ``max_tokens`` larger than a generation model's whole context can never be honoured: 400."""
    context = int(model.options.get("context_length", 2048))
    if max_tokens is not None and max_tokens > context:
        raise ContextLengthExceeded(
            f"max_tokens is {max_tokens}; the model's context is {context} tokens (prompt included)",
            details={"field": "max_tokens", "context_length": context})


def check_input_for_model(model, data: dict) -> None:
    """Checks that need the model's config: the job type it serves, ``max_tokens`` within a generation model's
    context (as the synchronous routes check it), the feature count of a tabular model."""
    model.check_serves(data["type"])
    if data["type"] in (JobType.COMPLETION, JobType.CHAT):
        check_context(model, data["input"].get("max_tokens"))
    n_features = model.options.get("n_features")
    features = data["input"].get("features")
    if n_features and features and len(features[0]) != n_features:
        raise InvalidRequest(f"model {model.name!r} takes rows of {n_features} features, got {len(features[0])}",
                             details={"field": "input.features"})
    if data["type"] is JobType.FEATURE_IMPORTANCE:
        importance.check_request(model, data["input"])


def submit(data: dict, *, owner: str, batch_id: str | None = None, idempotency: tuple[str, str] | None = None):
    """Validate against the model, store and enqueue a job; returns ``(job, created)``.

    Shared by every surface that creates jobs. A job and its Celery message are stored together or not at all
    (an error, and nothing is kept), so no job is left queued with no message behind it.
    """
    svc = services()
    model = svc.models.get(data["model"])
    check_input_for_model(model, data)
    settings = svc.settings
    if data.get("webhook"):  # the SSRF guard: refuse receivers on loopback, private, link-local... addresses
        NetworkGuard.from_settings(settings).check_url(
            data["webhook"]["url"], field="webhook_url" if data.get("webhook_url") else "webhook.url")
    for name, most in (("ttl_s", settings.max_ttl_s), ("timeout_s", settings.max_timeout_s)):
        if (data.get(name) or 0) > most:  # as the schema's own errors name their field
            message = f"must be at most {most} (INFERNO_MAX_{name[:-2].upper()}_S)"
            raise InvalidRequest(f"invalid request: {name} {message}", details={name: [message]})
    # Checked in the transaction that stores the job: a model whose runs keep failing takes no new jobs (503) until
    # a probe job succeeds; backpressure (503) and the tenant's concurrent-jobs limit (429).
    capacity = Capacity.of(model.pool, owner, model=model.name)
    job = Job.create(
        type=data["type"], model=model.name, tenant=owner, input=data["input"], priority=data["priority"],
        pool=model.pool, ttl_s=min(data.get("ttl_s") or settings.default_ttl_s, settings.max_ttl_s),
        timeout_s=min(data.get("timeout_s") or settings.default_timeout_s, settings.max_timeout_s),
        batch_id=batch_id, metadata=data.get("metadata") or {}, webhook=data.get("webhook"),
        request_id=request_id(),
    )
    # The result cache may answer it at once, or have it share the run of an identical job in flight (docs/cache.md).
    # Otherwise its Celery message is stored with it, in one transaction (workers/message.py).
    try:
        job, created = result_cache.create(job, model, idempotency, publish=_message_of, guard=capacity.guard)
    except atomic.Refused as refused:
        capacity.refuse(refused.reply)
    except (redis.exceptions.TimeoutError, redis.exceptions.ConnectionError) as exc:
        # Redis may have run the transaction and only its answer was lost (a timeout, or a connection dropped while
        # reading it): the client is told the id to look for (GET /jobs/<id>: 404 means it was not stored) rather
        # than "not accepted", which a retry would duplicate.
        raise StoreUnavailable.of(exc, details={"job_id": job.id},
                                  what=f"; job {job.id} may have been stored: GET /jobs/{job.id} tells (404: it "
                                       "was not), or retry with an Idempotency-Key") from exc
    capacity.admitted()
    if created:  # the request's access-log line names it (api/access_log.py)
        g.setdefault("created_jobs", []).append(job)
    return job, created


def _message_of(job: Job) -> list:
    """The Redis commands of ``job``'s Celery message; a job whose message cannot be built is not accepted."""
    from workers.celery_app import run_job_commands

    try:
        return run_job_commands(services().celery, job)
    except Exception as exc:
        # Nothing was stored: the caller gets an error and may retry (with the same Idempotency-Key too).
        raise InternalError(f"the job could not be enqueued ({exc.__class__.__name__}); it was not accepted, "
                            "retry later", retry_after_s=5) from exc


@bp.post("/jobs")
def create_job():
    """Submit a job: 202 with the job (200 with the first job for a repeated ``Idempotency-Key``)."""
    owner = tenant()
    body = json_body()
    data = load(shared(JobRequest), body)
    key = request.headers.get("Idempotency-Key")
    idempotency = None
    if key is not None:
        if not 1 <= len(key) <= 255:
            raise InvalidRequest("Idempotency-Key must be 1 to 255 characters")
        idempotency = (key, hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest())
    job, created = submit(data, owner=owner, idempotency=idempotency)
    response = jsonify(job_body(job))
    response.status_code = 202 if created else 200
    response.headers["Location"] = url_for("jobs.get_job", job_id=job.id)
    return response


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    """One job, or 404 ``JOB_NOT_FOUND`` (also for another tenant's job and for ids that never existed)."""
    return jsonify(job_body(services().store.get(job_id, tenant())))


@bp.get("/jobs")
def list_jobs():
    """The caller's jobs, newest first: ``?status=&type=&batch_id=&limit=&cursor=``."""
    owner = tenant()
    query = load(shared(JobListQuery), request.args.to_dict())
    store = services().store
    jobs, cursor = store.list(owner, **query)
    positions = store.queue_positions(jobs)  # one round trip for the page
    page = [job.to_api(position) for job, position in zip(jobs, positions)]
    return jsonify(shared(JobList).dump({"data": page, "next_cursor": cursor}))


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    """Cancel a job: queued -> ``canceled`` now; running -> cancellation requested; 409 if it already ended."""
    job = services().store.cancel(job_id, tenant())
    dispatch_webhooks()  # a queued job became canceled: its job.canceled event goes out now
    result_cache.settle_followers()  # a canceled leader's followers run on their own
    return jsonify(job_body(job))

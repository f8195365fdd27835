"""Rate limits and backpressure at the API edge (docs/operations.md#rate-limits).

Rate-limited routes are the ones that submit work: ``POST`` to ``/jobs``, ``/batches``, the seeds' endpoints and
everything under ``/v1``. Reads, cancels and controls are not limited, so polling a job never uses up a key's
budget. Each limited request is counted per API key (per client IP only when auth is disabled and
``INFERNO_RATE_LIMIT_BY_IP`` is on) and carries ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset``; over a
limit it answers 429 ``RATE_LIMIT_EXCEEDED`` with ``Retry-After``. When a pool's queues are full, submissions
answer 503 with ``Retry-After`` (:func:`check_capacity`).
"""

from __future__ import annotations

from flask import Flask, g, request

from api.request_context import engine_config, request_id, services, tenant
from inferno_jobs import reads
from inferno_jobs.circuit import CircuitBreaker
from inferno_jobs.errors import QueueFull, RateLimitExceeded
from inferno_jobs.metrics import RATE_LIMITED
from inferno_jobs.queue import pool_queues
from inferno_jobs.ratelimit import Limits, RateLimiter, estimate_tokens

LIMITED_PATHS = frozenset({"/jobs", "/batches", "/batch", "/inference", "/inference/stream", "/embeddings",
                           "/predict", "/predict/batch", "/predict/async", "/feature-importance"})
CONCURRENCY_RETRY_AFTER_S = 2
THROTTLE_RETRY_AFTER_S = 2


def rate_limited(method: str, path: str) -> bool:
    """Whether a request counts against its key's limits: work-submitting POSTs."""
    return method == "POST" and (path in LIMITED_PATHS or path.startswith("/v1/"))


def _limiter() -> RateLimiter:
    svc = services()
    limiter = getattr(svc, "_rate_limiter", None)
    if limiter is None:
        limiter = RateLimiter(svc.redis, svc.store.keys)
        svc._rate_limiter = limiter
    return limiter


def limits_for_caller() -> Limits | None:
    """The caller's limits: its key's overrides over the defaults; None when nothing is limited."""
    settings = services().settings
    if settings.auth_enabled:
        tenant()  # authenticates: a bad key is a 401 before anything is counted
        record = g.get("api_key")
        return Limits.from_settings(settings).merged(record.limits if record else None)
    if settings.rate_limit_by_ip:
        return Limits.from_settings(settings)
    return None


def subject() -> str:
    """Who a limited request counts against: its API key, or its client IP when auth is disabled."""
    record = g.get("api_key")
    return record.id if record is not None else f"ip:{request.remote_addr or 'unknown'}"


def check_capacity(pool: str, owner: str, *, model: str | None = None) -> None:
    """Refuse a new job when its model's circuit breaker is open (503, ``model``: the model it is for), when its
    pool's queues are full (503), when the deployment is throttled and has ``max_concurrent_requests`` jobs in
    flight (429), or when its tenant has too many jobs in flight (429). Every count is read in one round trip.

    Called by every surface that creates jobs (``api.jobs.submit``). The concurrency count is per tenant, with the
    calling key's limit; it applies only with auth enabled (with auth disabled every caller is the one local tenant).
    Throttling (``POST /config`` ``enable_throttling``) counts every tenant's queued and running jobs.
    """
    svc = services()
    settings = svc.settings
    config = engine_config()
    limits = (g.get("rate_limits") or limits_for_caller()) if settings.auth_enabled else None
    concurrent = limits.concurrent if limits is not None else 0
    with svc.redis.pipeline(transaction=False) as pipe:
        wanted = {
            "circuit": model and CircuitBreaker(svc.redis, settings).read_admission(pipe, model, token=request_id()),
            "in_flight": config.enable_throttling and svc.store.read_in_flight(pipe),
            "depth": settings.max_queue_depth and svc.store.read_queue_depths(pipe, pool_queues(pool)),
            "active": concurrent and svc.store.read_active_count(pipe, owner),
        }
        wanted = {name: read for name, read in wanted.items() if read}
        # In this order: an open circuit (its decode raises) answers before any limit is counted.
        counts = dict(zip(wanted, reads.run(pipe, list(wanted.values()))))
    in_flight, depth, active = counts.get("in_flight"), sum(counts.get("depth", ())), counts.get("active")
    if in_flight is not None and in_flight >= config.max_concurrent_requests:
        svc.store.metrics.inc(RATE_LIMITED, ("throttled",))
        raise RateLimitExceeded(
            f"the engine is throttled: {in_flight} jobs queued or running, its limit is "
            f"{config.max_concurrent_requests} (max_concurrent_requests); retry after {THROTTLE_RETRY_AFTER_S} "
            "seconds", details={"limit": "max_concurrent_requests", "limit_value": config.max_concurrent_requests,
                                "active": in_flight, "retry_after": THROTTLE_RETRY_AFTER_S},
            retry_after_s=THROTTLE_RETRY_AFTER_S)
    if "depth" in counts and depth >= settings.max_queue_depth:
        svc.store.metrics.inc(RATE_LIMITED, ("queue_depth",))
        raise QueueFull(f"the {pool} pool has {depth} jobs waiting, its limit (INFERNO_MAX_QUEUE_DEPTH); "
                        f"retry in {settings.queue_full_retry_after_s} s",
                        details={"reason": "queue_full", "pool": pool, "depth": depth,
                                 "max_queue_depth": settings.max_queue_depth},
                        retry_after_s=settings.queue_full_retry_after_s)
    if active is not None and active >= concurrent:
        svc.store.metrics.inc(RATE_LIMITED, ("concurrent",))
        raise RateLimitExceeded(
            f"too many jobs in flight: {active} queued or running, the limit is {concurrent}; "
            f"retry after {CONCURRENCY_RETRY_AFTER_S} seconds",
            details={"limit": "concurrent", "limit_value": concurrent, "active": active,
                     "retry_after": CONCURRENCY_RETRY_AFTER_S},
            retry_after_s=CONCURRENCY_RETRY_AFTER_S)


def count_request(subject: str, limits: Limits, body=None) -> None:
    """Count one request of ``subject`` against ``limits`` (its JSON ``body`` for the tokens limit); over a limit,
    raise 429 ``RATE_LIMIT_EXCEEDED``. The response gets the ``X-RateLimit-*`` headers either way."""
    g.rate_limits = limits
    decision = _limiter().hit(subject, limits, tokens=estimate_tokens(body) if limits.tpm else 0)
    g.rate_decision = decision
    if not decision.allowed:
        services().store.metrics.inc(RATE_LIMITED, (decision.refused_by,))
        what = {"rpm": "requests per minute", "rph": "requests per hour", "tpm": "tokens per minute"}
        raise RateLimitExceeded(
            f"Rate limit exceeded ({what[decision.refused_by]}). Please retry after {decision.retry_after_s} "
            "seconds.", details={"limit": decision.refused_by, "retry_after": decision.retry_after_s},
            retry_after_s=decision.retry_after_s)


def init_app(app: Flask) -> None:
    """Count each rate-limited request before its view runs and put the headers on its response."""

    @app.before_request
    def _count():
        if not rate_limited(request.method, request.path):
            return
        limits = limits_for_caller()
        if limits is None or not (limits.rpm or limits.rph or limits.tpm):
            return
        # Only a JSON body is read here: a multipart upload's stream must stay unread for its view.
        count_request(subject(), limits, request.get_json(silent=True) if request.is_json else None)

    @app.after_request
    def _headers(response):
        decision = g.get("rate_decision")
        if decision is not None and (decision.limit or decision.tokens_limit):
            response.headers.update(decision.headers())
        return response

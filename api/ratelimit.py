"""Rate limits and backpressure at the API edge (docs/operations.md#rate-limits).

Rate-limited routes are the ones that submit work: ``POST`` to ``/jobs``, ``/batches``, the seeds' endpoints and
everything on the OpenAI surface (``/v1``, and ``/chat/completions``, ``/completions``). Reads, cancels and
controls are not limited, so polling a job never uses up a key's budget. Each limited request is counted per API
key (per client IP only when auth is disabled and ``INFERNO_RATE_LIMIT_BY_IP`` is on) and carries
``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset``; over a limit it answers 429 ``RATE_LIMIT_EXCEEDED`` with
``Retry-After``. When a pool's queues are full, submissions answer 503 with ``Retry-After`` (:class:`Capacity`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from flask import Flask, g, request

from api.openai_errors import is_openai_path
from api.request_context import engine_config, request_id, services, tenant
from inferno_jobs import admission, atomic, circuit
from inferno_jobs.errors import QueueFull, RateLimitExceeded
from inferno_jobs.metrics import RATE_LIMITED
from inferno_jobs.ratelimit import Limits, RateLimiter, estimate_tokens

LIMITED_PATHS = frozenset({"/jobs", "/batches", "/batch", "/inference", "/inference/stream", "/embeddings",
                           "/predict", "/predict/batch", "/predict/async", "/feature-importance"})
CONCURRENCY_RETRY_AFTER_S = 2
THROTTLE_RETRY_AFTER_S = 2


def rate_limited(method: str, path: str) -> bool:
    """Whether a request counts against its key's limits: work-submitting POSTs."""
    return method == "POST" and (path in LIMITED_PATHS or is_openai_path(path))


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


@dataclass
class Capacity:
    """The capacity checks of one new job: its model's circuit breaker (503, ``model``: the model it is for), its
    pool's queues being full (503), the deployment being throttled with ``max_concurrent_requests`` jobs in flight
    (429), its tenant having too many jobs in flight (429), in that order. Redis decides them all in one script
    (inferno_jobs/admission.py): the guard of the transaction that stores the job, or run alone (:meth:`check`).

    The concurrency count is per tenant, with the calling key's limit; it applies only with auth enabled (with auth
    disabled every caller is the one local tenant). Throttling (``POST /config`` ``enable_throttling``) counts every
    tenant's queued and running jobs.
    """

    request: admission.Request
    guard: atomic.Guard

    @classmethod
    def of(cls, pool: str, owner: str, *, model: str | None = None) -> "Capacity":
        svc = services()
        settings = svc.settings
        config = engine_config()
        limits = (g.get("rate_limits") or limits_for_caller()) if settings.auth_enabled else None
        request = admission.Request(
            pool=pool, tenant=owner, model=model if settings.circuit_failure_threshold > 0 else None,
            probe_token=request_id(), probe_ms=settings.circuit_probe_s * 1000,
            in_flight_limit=config.max_concurrent_requests if config.enable_throttling else 0,
            depth_limit=settings.max_queue_depth, concurrency_limit=limits.concurrent if limits is not None else 0)
        return cls(request, admission.guard(svc.store.keys, request))

    def check(self) -> None:
        """Run the checks alone (one round trip): the error of the first that refuses, if any."""
        try:
            admission.check(services().redis, self.guard)
        except atomic.Refused as refused:
            self.refuse(refused.reply)
        self.admitted()

    def admitted(self) -> None:
        """After the checks let the job in: note a half-open circuit's probe."""
        reply = self.guard.reply
        if reply is not None and int(reply[1]) == 1:
            circuit.admitted(self.request.model, self.request.probe_token, 2, 0)

    def refuse(self, reply: list) -> NoReturn:
        """Raise the error of a refusal (``atomic.Refused.reply``), counted in the rate-limited metric."""
        svc = services()
        request = self.request
        why, numbers = admission.reason(reply)
        if why == "circuit":
            circuit.admitted(request.model, request.probe_token, *numbers)
        if why == "in_flight":
            svc.store.metrics.inc(RATE_LIMITED, ("throttled",))
            raise RateLimitExceeded(
                f"the engine is throttled: {numbers[0]} jobs queued or running, its limit is "
                f"{request.in_flight_limit} (max_concurrent_requests); retry after {THROTTLE_RETRY_AFTER_S} "
                "seconds", details={"limit": "max_concurrent_requests", "limit_value": request.in_flight_limit,
                                    "active": numbers[0], "retry_after": THROTTLE_RETRY_AFTER_S},
                retry_after_s=THROTTLE_RETRY_AFTER_S) from None
        if why == "depth":
            svc.store.metrics.inc(RATE_LIMITED, ("queue_depth",))
            retry_after_s = svc.settings.queue_full_retry_after_s
            raise QueueFull(f"the {request.pool} pool has {numbers[0]} jobs waiting, its limit "
                            f"(INFERNO_MAX_QUEUE_DEPTH); retry in {retry_after_s} s",
                            details={"reason": "queue_full", "pool": request.pool, "depth": numbers[0],
                                     "max_queue_depth": request.depth_limit},
                            retry_after_s=retry_after_s) from None
        svc.store.metrics.inc(RATE_LIMITED, ("concurrent",))
        raise RateLimitExceeded(
            f"too many jobs in flight: {numbers[0]} queued or running, the limit is {request.concurrency_limit}; "
            f"retry after {CONCURRENCY_RETRY_AFTER_S} seconds",
            details={"limit": "concurrent", "limit_value": request.concurrency_limit, "active": numbers[0],
                     "retry_after": CONCURRENCY_RETRY_AFTER_S},
            retry_after_s=CONCURRENCY_RETRY_AFTER_S) from None


def check_capacity(pool: str, owner: str, *, model: str | None = None) -> None:
    """:class:`Capacity`'s checks, alone: for what is admitted without a new job record (a retried job). A new
    job is checked in the transaction that stores it (``api.jobs.submit``)."""
    Capacity.of(pool, owner, model=model).check()


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

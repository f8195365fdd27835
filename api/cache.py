"""``/cache`` (seed 001): the result cache's statistics and clearing it; and job creation through the cache.

``GET /cache/stats`` needs any valid key, ``POST /cache/clear`` an admin key. A request whose jobs were all answered
from the cache carries ``X-Cache: HIT``; one with a cacheable job that was not, ``X-Cache: MISS`` (docs/cache.md).
"""

from __future__ import annotations

import logging

from flask import Blueprint, g, jsonify
from marshmallow import Schema, fields

from api.deliveries import dispatch_webhooks
from api.auth import require_operator_or_key
from api.request_context import engine_config, services
from inferno_jobs import engine_config as live_config
from inferno_jobs import resultcache
from inferno_jobs.job import Job, JobStatus, isoformat, now
from inferno_jobs.model import ModelConfig
from inferno_jobs.resultcache import ResultCache

bp = Blueprint("cache", __name__)
log = logging.getLogger(__name__)


class CacheStats(Schema):
    """One cache's numbers; counts are since the deployment began (``POST /cache/clear`` keeps them)."""

    size = fields.Integer(metadata={"description": "results cached now"})
    capacity = fields.Integer(metadata={"description": "max_cache_entries"})
    hit_count = fields.Integer()
    miss_count = fields.Integer()
    hit_rate = fields.Float(metadata={"description": "hit_count / (hit_count + miss_count); 0 before any lookup"})
    eviction_count = fields.Integer()


class CacheStatsResponse(Schema):
    """``GET /cache/stats``."""

    result_cache = fields.Nested(CacheStats)
    enabled = fields.Boolean(metadata={"description": "enable_cache: whether new requests use the cache"})
    ttl_seconds = fields.Integer(metadata={"description": "cache_ttl_seconds"})
    timestamp = fields.String()


class CacheClearResponse(Schema):
    """``POST /cache/clear``."""

    success = fields.Boolean()
    result_cache_cleared = fields.Boolean()
    cleared_entries = fields.Integer()
    message = fields.String()


# path -> method -> (summary, request schema name or None, success status, response schema name or None, error
# statuses), merged into GET /openapi.json by api/openapi.py; SCHEMAS: name -> marshmallow schema class.
ROUTES: dict = {
    "/cache/stats": {"get": ("The result cache: size, capacity, hits, misses, hit rate, evictions", None, 200,
                             "CacheStatsResponse", (401,))},
    "/cache/clear": {"post": ("Drop every cached result (admin key)", None, 200, "CacheClearResponse", (401, 403))},
}
SCHEMAS: dict = {"CacheStats": CacheStats, "CacheStatsResponse": CacheStatsResponse,
                 "CacheClearResponse": CacheClearResponse}


def _cache() -> ResultCache:
    svc = services()
    return ResultCache(svc.redis, svc.store.keys, live_config.load(svc.redis, svc.store.keys, svc.settings))


@bp.get("/cache/stats")
def cache_stats():
    """The result cache's size, capacity, hit and miss counts, hit rate and evictions."""
    require_operator_or_key()
    cache = _cache()
    return jsonify(CacheStatsResponse().dump({"result_cache": cache.stats(), "enabled": cache.config.enable_cache,
                                              "ttl_seconds": cache.config.cache_ttl_seconds,
                                              "timestamp": isoformat(now())}))


@bp.post("/cache/clear")
def cache_clear():
    """Drop every cached result, for every tenant (admin key); the counters keep counting."""
    from api.controls import require_admin  # api.controls imports api.jobs, which imports this module

    require_admin()
    cleared = _cache().clear()
    return jsonify(CacheClearResponse().dump({"success": True, "result_cache_cleared": True,
                                              "cleared_entries": cleared,
                                              "message": f"Result cache cleared ({cleared} entries)"}))


def create(job: Job, model: ModelConfig, idempotency: tuple[str, str] | None = None, *,
           publish=None, guard=None) -> tuple[Job, bool]:
    """Store a new job through the result cache (``inferno_jobs.resultcache.create``); returns ``(job, created)``.

    Only a job that comes back queued without ``shared_run_of`` needs a Celery message: ``publish(job)``'s
    commands, stored with it. ``guard`` (an ``atomic.Guard``: the capacity checks) runs in the same transaction.
    """
    svc = services()
    job, created = resultcache.create(svc.store, engine_config(), job, model, idempotency, publish=publish,
                                      guard=guard)
    if created and (job.cache_key or job.status is JobStatus.SUCCEEDED):
        g.cache_outcomes = [*g.get("cache_outcomes", []), job.status is JobStatus.SUCCEEDED]
        if job.status is JobStatus.SUCCEEDED and job.webhook:
            dispatch_webhooks()  # its job.succeeded event goes out now, as a worker's would
    return job, created


@bp.after_app_request
def _cache_header(response):
    outcomes = g.get("cache_outcomes")
    if outcomes:
        response.headers["X-Cache"] = "HIT" if all(outcomes) else "MISS"
    return response


def settle_followers() -> None:
    """Settle the followers of leaders that ended (after the API ended a job: a cancel); failures are only logged,
    the reconciler settles what is left."""
    svc = services()
    from workers.celery_app import enqueue

    try:
        resultcache.settle(svc.store, lambda job: enqueue(svc.celery, job))
    except Exception:
        log.exception("settling followers failed; the reconciler will settle them")

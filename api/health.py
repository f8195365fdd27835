"""``/health`` and ``/ready``: Redis, workers online (from their heartbeats, never a slow broadcast), queues;
``/livez``: only that the process serves."""

from __future__ import annotations

import json
import time

from flask import Blueprint, jsonify

from api.request_context import services
from inferno_jobs import __version__
from inferno_jobs.job import now
from inferno_jobs.queue import all_queues
from inferno_jobs.schemas import HealthResponse

bp = Blueprint("health", __name__)


WORKERS_CACHE_S = 1.0


def workers_online() -> list[dict]:
    """Workers whose heartbeat is recent (three reconcile intervals); read from Redis at most once a second per
    API process, so probes and scrapes stay cheap whatever their rate."""
    svc = services()
    cached = getattr(svc, "_workers_cache", None)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    horizon = now() - 3 * max(1, svc.settings.reconcile_interval_s) - 5
    beats = [json.loads(v) for v in svc.redis.hgetall(svc.store.keys.workers()).values()]
    online = [b for b in beats if b.get("last_seen", 0) >= horizon]
    svc._workers_cache = (time.monotonic() + WORKERS_CACHE_S, online)
    return online


def snapshot() -> dict:
    """The health document; Redis being down is reported, not raised."""
    from api.models import loaded_models  # api.models imports this module (through api.controls)

    svc = services()
    body = {"version": __version__, "uptime_seconds": round(now() - svc.started_at, 3)}
    try:
        svc.redis.ping()
        workers = workers_online()
        queues = dict(zip(all_queues(), svc.store.queue_depths(all_queues())))
        models_loaded = len(loaded_models())
        redis_state = "ok"
    except Exception:
        workers, queues, models_loaded, redis_state = [], {}, 0, "down"
    # A webhooks worker alone runs no job: the jobs accepted would wait for an inference worker.
    healthy = redis_state == "ok" and any(w.get("pool") != "webhooks" for w in workers)
    body.update(status="healthy" if healthy else "degraded", redis=redis_state, workers=len(workers), queues=queues,
                models_loaded=models_loaded)
    return body


@bp.get("/health")
def health():
    """Always 200 while the API runs; ``status`` says ``healthy`` or ``degraded``."""
    return jsonify(HealthResponse().dump(snapshot()))


@bp.get("/livez")
def livez():
    """200 while this process serves requests. It reads nothing, Redis included, so a liveness probe never
    restarts API processes over an outage that a restart cannot mend (``/health`` waits on a frozen Redis for
    up to its socket timeout)."""
    svc = services()
    return jsonify({"status": "alive", "version": __version__, "uptime_seconds": round(now() - svc.started_at, 3)})


@bp.get("/ready")
def ready():
    """200 when Redis answers and an inference (cpu or gpu) worker is online; 503 otherwise."""
    body = HealthResponse().dump(snapshot())
    return jsonify(body), (200 if body["status"] == "healthy" else 503)

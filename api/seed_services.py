"""Seed 002's router endpoints, ``GET /services`` and ``GET /stats``: the worker nodes as the seed's router showed
its backend services.

Thin views over ``GET /workers`` (``api/controls.py``): each node's heartbeat and the counters its processes keep
in Redis (``inferno_jobs.metrics.worker_stats``). A worker has no URL of its own (it takes jobs from the queues;
nothing calls it), so a service has its ``host`` where the seed had ``url``.
"""

from __future__ import annotations

from flask import Blueprint, jsonify
from marshmallow import Schema, fields

from api.auth import require_operator_or_key
from api.controls import worker_nodes

bp = Blueprint("seed_services", __name__)


class SeedService(Schema):
    """One worker node in ``GET /services``."""

    name = fields.String(metadata={"description": "the Celery node name, e.g. cpu-1@host"})
    host = fields.String()
    pool = fields.String()
    healthy = fields.Boolean(metadata={"description": "its heartbeat is recent"})
    models = fields.List(fields.String(), metadata={"description": "models its processes hold loaded"})
    queues = fields.List(fields.String())


class SeedServiceList(Schema):
    """``GET /services``."""

    services = fields.List(fields.Nested(SeedService))
    total = fields.Integer()


class SeedServiceStats(Schema):
    """One worker node in ``GET /stats``."""

    name = fields.String()
    healthy = fields.Boolean()
    request_count = fields.Integer(metadata={"description": "jobs it has run"})
    error_count = fields.Integer(metadata={"description": "of those, the ones that failed"})
    response_time = fields.Float(allow_none=True, metadata={"description": "mean run time of a job in seconds; "
                                                                           "null before its first"})


class SeedStats(Schema):
    """``GET /stats``."""

    total_services = fields.Integer()
    healthy_services = fields.Integer()
    services = fields.List(fields.Nested(SeedServiceStats))


@bp.get("/services")
def list_services():
    """Every worker node that sent a heartbeat: its pool, health, loaded models and queues."""
    require_operator_or_key()
    nodes = worker_nodes()
    return jsonify(SeedServiceList().dump({"services": nodes, "total": len(nodes)}))


@bp.get("/stats")
def stats():
    """Every worker node's job count, error count and mean run time."""
    require_operator_or_key()
    nodes = worker_nodes()
    services = [{"name": n["name"], "healthy": n["healthy"], "request_count": n["jobs_done"],
                 "error_count": n["errors"], "response_time": n["mean_run_time_s"]} for n in nodes]
    return jsonify(SeedStats().dump({"total_services": len(nodes),
                                     "healthy_services": sum(1 for n in nodes if n["healthy"]),
                                     "services": services}))


# Merged into GET /openapi.json by api/openapi.py (see api/feature_importance.py for the tuple's fields).
ROUTES: dict = {
    "/services": {"get": ("Worker nodes as backend services (seed 002's shape; GET /workers in full)", None, 200,
                          "SeedServiceList", (401,))},
    "/stats": {"get": ("Job counts, errors and mean run time per worker node (seed 002's shape)", None, 200,
                       "SeedStats", (401,))},
}
SCHEMAS: dict = {"SeedService": SeedService, "SeedServiceList": SeedServiceList,
                 "SeedServiceStats": SeedServiceStats, "SeedStats": SeedStats}

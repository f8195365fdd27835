"""``GET /metrics``: Prometheus text, rendered by a custom ``prometheus_client`` collector from Redis.

The counters and histograms live in Redis (``inferno_jobs/metrics.py``), written by the API processes and by every
worker process in the same transaction as the job changes they count. So the numbers are the same whichever API
replica or gunicorn process Prometheus scrapes, include what the workers did (they need no endpoint of their own),
and survive restarts. Gauges (queue depth, workers online, models loaded) are read at scrape time.
"""

from __future__ import annotations

import json

from flask import Blueprint, Response, jsonify
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from api.health import workers_online
from api.body import json_body, load
from api.request_context import services, tenant
from inferno_jobs.circuit import CircuitBreaker
from inferno_jobs.custom_metrics import CustomMetricRequest, CustomMetrics, CustomMetricSample
from inferno_jobs.job import now
from inferno_jobs.metrics import SPECS, Metrics
from inferno_jobs.queue import POOLS, WEBHOOK_QUEUE, all_queues

bp = Blueprint("metrics", __name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RedisCollector:
    """Yields every inferno metric from Redis on each scrape."""

    def __init__(self, svc):
        self.svc = svc

    def collect(self):
        svc = self.svc
        metrics = Metrics(svc.redis, svc.store.keys)
        for spec in SPECS.values():
            name = f"inferno_{spec.name}"
            if spec.histogram:
                family = HistogramMetricFamily(name, spec.help, labels=spec.labels)
                for labels, (buckets, total) in sorted(metrics.histogram(spec).items()):
                    family.add_metric(list(labels), buckets, total)
            else:
                family = CounterMetricFamily(name, spec.help, labels=spec.labels)
                for labels, value in sorted(metrics.counter(spec).items()):
                    family.add_metric(list(labels), value)
            yield family

        depth = GaugeMetricFamily("inferno_queue_depth", "Jobs waiting in each queue (webhooks: messages)",
                                  labels=["queue"])
        for queue in all_queues():
            depth.add_metric([queue], svc.store.queue_depth(queue))
        depth.add_metric([WEBHOOK_QUEUE], svc.redis.llen(WEBHOOK_QUEUE))
        yield depth

        paused = GaugeMetricFamily("inferno_queue_paused", "1 while an operator has paused the queue",
                                   labels=["queue"])
        paused_queues = {q.decode() if isinstance(q, bytes) else q
                         for q in svc.redis.smembers(svc.store.keys.paused_queues())}
        for queue in all_queues():
            paused.add_metric([queue], 1 if queue in paused_queues else 0)
        yield paused

        online = GaugeMetricFamily("inferno_workers_online", "Worker nodes with a recent heartbeat, by pool",
                                   labels=["pool"])
        per_pool: dict[str, int] = {}
        for beat in workers_online():
            per_pool[beat.get("pool", "cpu")] = per_pool.get(beat.get("pool", "cpu"), 0) + 1
        for pool in sorted(set(per_pool) | set(POOLS) | {"webhooks"}):  # 0, not absent, for a pool with none online
            online.add_metric([pool], per_pool.get(pool, 0))
        yield online

        loaded = GaugeMetricFamily("inferno_model_loaded_processes",
                                   "Worker processes that hold each model in memory", labels=["model"])
        counts: dict[str, int] = {}
        horizon = now() - 3 * svc.settings.lease_s
        for raw in svc.redis.hgetall(svc.store.keys.loaded_models()).values():
            report = json.loads(raw)
            if report.get("reported_at", 0) < horizon:
                continue
            for model in report.get("models", []):
                counts[model] = counts.get(model, 0) + 1
        for model in sorted({m.name for m in svc.models.all()} | set(counts)):
            loaded.add_metric([model], counts.get(model, 0))
        yield loaded

        circuit = GaugeMetricFamily("inferno_circuit_breaker_state",
                                    "Circuit breaker of each model: 0 closed, 1 half-open, 2 open", labels=["model"])
        for breaker in CircuitBreaker(svc.redis, svc.settings).get_many(sorted(m.name for m in svc.models.all())):
            circuit.add_metric([breaker.model], breaker.state.gauge)
        yield circuit

        live = GaugeMetricFamily("inferno_jobs_running", "Jobs running now", value=svc.redis.zcard(
            svc.store.keys.running_leases()))
        yield live

        outbox = GaugeMetricFamily("inferno_webhook_outbox", "Webhook events not yet handed to the webhooks queue",
                                   value=svc.redis.llen(svc.store.keys.outbox())
                                   + svc.redis.zcard(svc.store.keys.outbox_claimed()))
        yield outbox

        yield from custom_metrics(svc).collect()  # POST /metrics/custom


def render(svc) -> bytes:
    """The Prometheus text of every inferno metric."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(svc))
    return generate_latest(registry)


@bp.get("/metrics")
def metrics():
    """Prometheus text exposition (no auth: scrape it from inside the deployment's network)."""
    return Response(render(services()), content_type=CONTENT_TYPE)


def custom_metrics(svc) -> CustomMetrics:
    """The deployment's custom metrics (inferno_jobs/custom_metrics.py)."""
    return CustomMetrics(svc.redis, svc.store.keys, svc.settings.custom_metrics_max_series)


@bp.post("/metrics/custom")
def push_custom_metric():
    """Record a sample of the caller's custom metric: 201 when it starts a series, 200 when it updates one."""
    owner = tenant()
    sample = custom_metrics(services()).record(load(CustomMetricRequest(), json_body()), owner)
    return jsonify(CustomMetricSample().dump(sample)), 201 if sample["created"] else 200

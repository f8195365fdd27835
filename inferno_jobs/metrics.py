"""Metrics kept in Redis, so that every API replica, every gunicorn process and every worker process on any host
adds to the same counters, and any API process can render them all at ``GET /metrics``.

Counters and histogram buckets are Redis hashes (one per metric, a field per label set) moved with HINCRBY in the
same MULTI as the change they count: a job's ``finished`` counter moves exactly when its status does. This module
only writes and reads the numbers; ``api/metrics.py`` renders them with ``prometheus_client``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import redis

from inferno_jobs.job import Job, JobStatus, now
from inferno_jobs.keyspace import Keyspace


@dataclass(frozen=True)
class Spec:
    """One metric: its Prometheus name (without the ``inferno_`` prefix), help text and label names."""

    name: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()  # a histogram when set

    @property
    def histogram(self) -> bool:
        return bool(self.buckets)


WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
RUN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

JOBS_SUBMITTED = Spec("jobs_submitted", "Jobs accepted, by type, model and priority", ("type", "model", "priority"))
JOBS_FINISHED = Spec("jobs_finished", "Jobs that reached a terminal status",
                     ("type", "model", "priority", "status"))
JOBS_RETRIED = Spec("jobs_retried", "Jobs an operator sent to run again (POST /jobs/<id>/retry)", ("model",))
QUEUE_WAIT = Spec("job_queue_wait_seconds", "Time from submission to the first start of a job",
                  ("model", "priority"), WAIT_BUCKETS)
RUN_TIME = Spec("job_run_seconds", "Run time of a job's last attempt, by outcome", ("type", "model", "status"),
                RUN_BUCKETS)
WEBHOOK_DELIVERIES = Spec("webhook_deliveries", "Webhook delivery attempts by event and outcome "
                          "(delivered, retrying, failed, dropped)", ("event", "outcome"))
BATCH_LINES = Spec("batch_lines", "Batch lines processed, by model and outcome", ("model", "status"))
RATE_LIMITED = Spec("rate_limited", "Requests refused with 429 or 503, by the limit that refused them", ("limit",))
INGEST_WEBHOOKS = Spec("ingest_webhooks", "Inbound signed webhooks (POST /webhooks/ingest) by source, outcome "
                       "(accepted, refused) and the reason of a refusal", ("source", "outcome", "reason"))

CIRCUIT_OPENS = Spec("circuit_breaker_open", "Times a model's circuit breaker opened (docs/operations.md)", ("model",))

CACHE_HITS = Spec("cache_hits", "Requests answered from the result cache (docs/cache.md)", ("type", "model"))
CACHE_MISSES = Spec("cache_misses", "Cacheable requests the result cache could not answer", ("type", "model"))
CACHE_EVICTIONS = Spec("cache_evictions", "Results evicted from the cache to stay within max_cache_entries", ())
CACHE_SHARED = Spec("cache_shared_runs", "Requests that shared the run of an identical request in flight",
                    ("type", "model"))

SPECS = {s.name: s for s in (JOBS_SUBMITTED, JOBS_FINISHED, JOBS_RETRIED, QUEUE_WAIT, RUN_TIME, WEBHOOK_DELIVERIES,
                             BATCH_LINES, RATE_LIMITED, INGEST_WEBHOOKS, CIRCUIT_OPENS, CACHE_HITS, CACHE_MISSES,
                             CACHE_EVICTIONS, CACHE_SHARED)}


@lru_cache(maxsize=4096)  # a deployment has few label sets, and every job transition names some
def _field(values: tuple) -> str:
    return json.dumps([str(v) for v in values], separators=(",", ":"))


class Tally:
    """Metric moves gathered over the writes of one transaction and written merged, one HINCRBY (or
    HINCRBYFLOAT) per field: a micro-batch of 64 jobs moves the same few fields 64 times each. Pass it where a
    pipeline is expected (``pipe=``), then :meth:`flush` it into the transaction."""

    def __init__(self):
        self._counts: dict[tuple[str, str], int] = {}
        self._sums: dict[tuple[str, str], float] = {}

    def hincrby(self, key: str, field: str, amount: int) -> None:
        self._counts[key, field] = self._counts.get((key, field), 0) + amount

    def hincrbyfloat(self, key: str, field: str, amount: float) -> None:
        self._sums[key, field] = self._sums.get((key, field), 0.0) + amount

    def flush(self, pipe) -> None:
        """Queue the merged moves on ``pipe``, and forget them."""
        for (key, field), amount in self._counts.items():
            pipe.hincrby(key, field, amount)
        for (key, field), amount in self._sums.items():
            pipe.hincrbyfloat(key, field, amount)
        self._counts.clear()
        self._sums.clear()


class Metrics:
    """Writes and reads the Redis-kept metrics of one deployment."""

    def __init__(self, client: redis.Redis, keys: Keyspace):
        self.redis = client
        self.keys = keys

    # -- writing: pass a pipeline (or a Tally) to move a metric in the same transaction as the change it counts ---

    def inc(self, spec: Spec, labels: tuple, amount: float = 1, pipe=None) -> None:
        """Add ``amount`` to a counter."""
        target = pipe if pipe is not None else self.redis
        target.hincrby(self.keys.metric(spec.name), _field(labels), int(amount))

    def observe(self, spec: Spec, labels: tuple, value: float, pipe=None) -> None:
        """Record one observation of a histogram (its bucket, its sum and its count)."""
        target = pipe if pipe is not None else self.redis
        key = self.keys.metric(spec.name)
        bucket = next((str(b) for b in spec.buckets if value <= b), "+Inf")
        target.hincrby(key, _field((*labels, bucket)), 1)
        target.hincrbyfloat(key, _field((*labels, "_sum")), max(0.0, float(value)))

    def record_transition(self, pipe, job: Job, before: JobStatus | None) -> None:
        """The metrics a job's status change moves: submitted, started (queue wait), finished (run time)."""
        if before is None and job.status is JobStatus.QUEUED:
            self.inc(JOBS_SUBMITTED, (job.type.value, job.model, job.priority.value), pipe=pipe)
        elif before is JobStatus.QUEUED and job.status is JobStatus.RUNNING and len(job.attempts) == 1:
            self.observe(QUEUE_WAIT, (job.model, job.priority.value), job.attempts[0].started_at - job.created_at,
                         pipe=pipe)
        if job.status.terminal and before is not None and not before.terminal:
            self.inc(JOBS_FINISHED, (job.type.value, job.model, job.priority.value, job.status.value), pipe=pipe)
            if before is JobStatus.RUNNING and job.attempts:
                last = job.attempts[-1]
                self.observe(RUN_TIME, (job.type.value, job.model, job.status.value),
                             (last.finished_at or now()) - last.started_at, pipe=pipe)
        elif before is not None and before.terminal and job.status is JobStatus.QUEUED:
            self.inc(JOBS_RETRIED, (job.model,), pipe=pipe)

    # -- reading ---------------------------------------------------------------------------------------------------

    def _hash(self, spec: Spec) -> dict[tuple, float]:
        raw = self.redis.hgetall(self.keys.metric(spec.name))
        return {tuple(json.loads(k)): float(v) for k, v in raw.items()}

    def counter(self, spec: Spec) -> dict[tuple, float]:
        """Label values -> count."""
        return self._hash(spec)

    def histogram(self, spec: Spec) -> dict[tuple, tuple[list[tuple[str, float]], float]]:
        """Label values -> (cumulative ``[(le, count)]`` ending with ``+Inf``, sum)."""
        per_labels: dict[tuple, dict[str, float]] = {}
        for key, value in self._hash(spec).items():
            per_labels.setdefault(key[:-1], {})[key[-1]] = value
        out = {}
        for labels, cells in per_labels.items():
            running, buckets = 0.0, []
            for le in [str(b) for b in spec.buckets] + ["+Inf"]:
                running += cells.get(le, 0.0)
                buckets.append((le, running))
            out[labels] = (buckets, cells.get("_sum", 0.0))
        return out


# -- per-worker counters for GET /workers (the seeds' /stats view) ---------------------------------------------------

def record_worker_jobs(client: redis.Redis, keys: Keyspace, hostname: str, jobs: list[Job], *,
                       process: str = "", models: list[str] | None = None) -> None:
    """Count the jobs a worker node just finished: done, errors (failed or timed out) and run time."""
    if not hostname:
        return
    errors = sum(1 for j in jobs if j.status in (JobStatus.FAILED, JobStatus.TIMED_OUT))
    run_ms = 0.0
    for job in jobs:
        if job.attempts and job.attempts[-1].finished_at:
            run_ms += (job.attempts[-1].finished_at - job.attempts[-1].started_at) * 1000
    key = keys.worker_stats(hostname)
    with client.pipeline() as pipe:
        pipe.hincrby(key, "jobs_done", len(jobs))
        pipe.hincrby(key, "errors", errors)
        pipe.hincrbyfloat(key, "run_ms", run_ms)
        pipe.hset(key, "last_job_at", now())
        if process and models is not None:
            pipe.hset(key, f"models:{process}", json.dumps({"models": models, "at": now()}))
        pipe.expire(key, 7 * 24 * 3600)
        pipe.execute()


def worker_stats(client: redis.Redis, keys: Keyspace, hostname: str, horizon_s: float = 300,
                 reports: dict[str, dict] | None = None) -> dict:
    """One node's counters: ``jobs_done``, ``errors``, ``mean_run_time_s`` and the models its processes hold.

    A process's models are the ones it held at its last jobs, or, when newer, the ones its last report of loaded
    models gives (``reports``: process -> report, as ``api.models.worker_reports`` reads them), so an unload shows
    at once."""
    raw = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
           for k, v in client.hgetall(keys.worker_stats(hostname)).items()}
    done = int(raw.get("jobs_done", 0))
    models: set[str] = set()
    for field, value in raw.items():
        if field.startswith("models:"):
            report = json.loads(value)
            latest = (reports or {}).get(field[len("models:"):])
            if latest is not None and latest.get("reported_at", 0) >= report.get("at", 0):
                models.update(latest.get("models", []))
            elif report.get("at", 0) >= now() - horizon_s:
                models.update(report.get("models", []))
    return {"jobs_done": done, "errors": int(raw.get("errors", 0)),
            "mean_run_time_s": round(float(raw.get("run_ms", 0)) / done / 1000, 6) if done else None,
            "models": sorted(models)}

"""Every Redis key inferno-jobs uses is built here, under one prefix (``INFERNO_KEY_PREFIX``)."""

from __future__ import annotations

import hashlib


class Keyspace:
    """Builds the Redis keys of one deployment."""

    def __init__(self, prefix: str = "inferno"):
        self.prefix = prefix

    def job(self, job_id: str) -> str:
        """The job record (a JSON string)."""
        return f"{self.prefix}:job:{job_id}"

    def tenant_jobs(self, tenant: str) -> str:
        """A tenant's job ids, a lexicographic sorted set (ids sort by creation time)."""
        return f"{self.prefix}:jobs:{tenant}"

    def queued(self, queue: str) -> str:
        """Jobs waiting in one Celery queue, scored by enqueue order: gives ``queue_position``."""
        return f"{self.prefix}:queued:{queue}"

    def waiting(self, model: str) -> str:
        """Queued jobs of one model, highest priority then oldest first: what a worker micro-batches."""
        return f"{self.prefix}:waiting:{model}"

    def reconcile_lock(self) -> str:
        """Held by the one worker that runs the reconciler this tick."""
        return f"{self.prefix}:lock:reconcile"

    def sequence(self) -> str:
        """A counter that orders enqueues."""
        return f"{self.prefix}:seq"

    def queued_deadlines(self) -> str:
        """Queued jobs scored by the time they expire (created_at + ttl_s)."""
        return f"{self.prefix}:deadlines:queued"

    def running_leases(self) -> str:
        """Running jobs scored by the time their lease runs out."""
        return f"{self.prefix}:leases:running"

    def idempotency(self, tenant: str, key: str) -> str:
        """The job an ``Idempotency-Key`` created; the key is hashed so any header value is safe."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self.prefix}:idem:{tenant}:{digest}"

    def outbox(self) -> str:
        """Events (job reached a terminal state) waiting to be handed to webhook delivery."""
        return f"{self.prefix}:outbox"

    def api_key(self, key_hash: str) -> str:
        """An API key record, found by the SHA-256 of the key."""
        return f"{self.prefix}:apikey:{key_hash}"

    def api_keys(self) -> str:
        """Every API key: key id -> key hash."""
        return f"{self.prefix}:apikeys"

    def tenant(self, tenant: str) -> str:
        """A tenant's record (webhook secrets)."""
        return f"{self.prefix}:tenant:{tenant}"

    def workers(self) -> str:
        """Worker heartbeats: hostname -> JSON (pool, models, last seen)."""
        return f"{self.prefix}:workers"

    def loaded_models(self) -> str:
        """What each worker process has loaded: ``host:pid`` -> JSON (models, reported_at)."""
        return f"{self.prefix}:loaded"

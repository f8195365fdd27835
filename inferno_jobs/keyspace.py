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

    def job_events(self, job_id: str) -> str:
        """A job's event stream (a Redis stream): its status changes and, for streaming jobs, its tokens."""
        return f"{self.prefix}:job:{job_id}:events"

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

    def queued_sent(self) -> str:
        """Queued jobs scored by when their message was last sent: a lost message is sent again."""
        return f"{self.prefix}:queued:sent"

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

    def outbox_claimed(self) -> str:
        """Outbox events taken by a dispatcher but not yet handed to Celery, scored by when they were taken."""
        return f"{self.prefix}:outbox:claimed"

    def deliveries(self, subject_id: str) -> str:
        """The webhook delivery log of one job or batch: a list of attempts, oldest first."""
        return f"{self.prefix}:deliveries:{subject_id}"

    def webhook_bodies(self, subject_id: str) -> str:
        """The body of each webhook event of one job or batch, by webhook-id, as of the event: a hash."""
        return f"{self.prefix}:deliveries:{subject_id}:bodies"

    def batch(self, batch_id: str) -> str:
        """A batch record: a hash (``meta`` JSON, ``status``, counters, times), so counters move atomically."""
        return f"{self.prefix}:batch:{batch_id}"

    def batch_items(self, batch_id: str) -> str:
        """A batch's requests: item index -> compact JSON (line, custom_id, input)."""
        return f"{self.prefix}:batch:{batch_id}:items"

    def batch_results(self, batch_id: str) -> str:
        """A batch's outcomes: item index -> compact JSON (status, result or error); written once per item."""
        return f"{self.prefix}:batch:{batch_id}:results"

    def batch_chunks(self, batch_id: str) -> str:
        """A batch's chunks: chunk index -> JSON list of item indexes (one engine call each)."""
        return f"{self.prefix}:batch:{batch_id}:chunks"

    def batch_done(self, batch_id: str) -> str:
        """The chunk indexes whose results are stored: a redelivered chunk finds itself here and stops."""
        return f"{self.prefix}:batch:{batch_id}:done"

    def tenant_batches(self, tenant: str) -> str:
        """A tenant's batch ids, a lexicographic sorted set (ids sort by creation time)."""
        return f"{self.prefix}:batches:{tenant}"

    def live_batches(self) -> str:
        """Batches not yet terminal, scored by creation time: what the reconciler checks."""
        return f"{self.prefix}:batches:live"

    def batch_deadlines(self) -> str:
        """Batches with a ``completion_window``, scored by when it ends: the reconciler expires them."""
        return f"{self.prefix}:batches:deadlines"

    def file(self, file_id: str) -> str:
        """An uploaded file: a hash (``meta`` JSON, ``data`` bytes)."""
        return f"{self.prefix}:file:{file_id}"

    def tenant_files(self, tenant: str) -> str:
        """A tenant's file ids, a lexicographic sorted set."""
        return f"{self.prefix}:files:{tenant}"

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

    def model_commands(self) -> str:
        """The last load/unload an operator asked of every worker, per model: name -> JSON."""
        return f"{self.prefix}:models:commands"

    def model_generation(self) -> str:
        """A counter bumped on every load/unload request: worker processes reconcile when it moves."""
        return f"{self.prefix}:models:generation"

    def model_validation(self, request_id: str) -> str:
        """The report of one ``POST /models/<id>/validate``."""
        return f"{self.prefix}:models:validation:{request_id}"

    def loaded_models(self) -> str:
        """What each worker process has loaded: ``host:pid`` -> JSON (models, reported_at)."""
        return f"{self.prefix}:loaded"

    # -- operating it (docs/operations.md) ------------------------------------------------------------------------

    def fair_queue(self, queue: str) -> str:
        """Queued jobs of one Celery queue scored by their fair-share tag: the order workers claim them in."""
        return f"{self.prefix}:fair:{queue}"

    def fair_last_tag(self, queue: str) -> str:
        """Per tenant, the fair-share tag of its latest job in ``queue`` (a hash)."""
        return f"{self.prefix}:fair:{queue}:last"

    def fair_clock(self, queue: str) -> str:
        """The virtual time of ``queue``: the highest tag of a job that started."""
        return f"{self.prefix}:fair:{queue}:clock"

    def tenant_active(self, tenant: str) -> str:
        """A tenant's queued or running jobs, scored by when they must have ended: its concurrency count."""
        return f"{self.prefix}:active:{tenant}"

    def rate_window(self, subject: str, limit: str, window_start: int) -> str:
        """One fixed rate-limit window of one subject (an API key id or ``ip:<addr>``)."""
        return f"{self.prefix}:rl:{subject}:{limit}:{window_start}"

    def paused_queues(self) -> str:
        """Queue names an operator paused (a set): workers stop consuming them."""
        return f"{self.prefix}:queues:paused"

    def metric(self, name: str) -> str:
        """A metric kept in Redis (a hash: label values -> count), shared by every API and worker process."""
        return f"{self.prefix}:metrics:{name}"

    def worker_stats(self, hostname: str) -> str:
        """Counters of one Celery worker node (jobs, errors, run time), kept by its pool processes."""
        return f"{self.prefix}:workerstats:{hostname}"

    # -- runtime configuration, result cache (docs/configuration.md#runtime-configuration) ----------------------

    def engine_config(self) -> str:
        """The engine settings an operator changed with ``POST /config``: field -> JSON value (a hash)."""
        return f"{self.prefix}:engine:config"

    def engine_restart(self) -> str:
        """How many times ``POST /restart`` was asked (a counter every worker process follows)."""
        return f"{self.prefix}:engine:restart"

    def engine_restart_acks(self) -> str:
        """Worker process (``host:pid``) -> the restart count it has applied (a hash)."""
        return f"{self.prefix}:engine:restart:acks"

    # -- traces and custom metrics (docs/operations.md#traces, docs/operations.md#custom-metrics) ------------------

    def traces(self) -> str:
        """Summaries of the latest finished spans of the API and workers, newest first (a capped list of JSON)."""
        return f"{self.prefix}:traces"

    def custom_metrics(self) -> str:
        """Custom metrics defined with ``POST /metrics/custom``: name -> JSON (type, help, label names)."""
        return f"{self.prefix}:custom:metrics"

    def custom_series(self) -> str:
        """Every custom metric series (metric name and label values, a set): what the series cap counts."""
        return f"{self.prefix}:custom:series"

    # -- operator logins (docs/security.md#operator-logins) ----------------------------------------------------------

    def jwt_secret(self) -> str:
        """The generated signing key of operator tokens, shared by every API replica (set once, with SET NX)."""
        return f"{self.prefix}:auth:jwt_secret"

    def login_failures(self, username: str, client_ip: str, window_start: int) -> str:
        """Failed logins of one username from one client IP in one minute; the name is hashed so any value is safe."""
        digest = hashlib.sha256(username.encode()).hexdigest()[:32]
        return f"{self.prefix}:auth:failures:{digest}:{client_ip}:{window_start}"

    # -- inbound signed webhooks (docs/webhooks.md#inbound-webhooks) ------------------------------------------------

    def ingest_source(self, name: str) -> str:
        """An inbound webhook source (a JSON string: tenant, secrets, job defaults)."""
        return f"{self.prefix}:ingest:source:{name}"

    def ingest_sources(self) -> str:
        """The names of every inbound webhook source (a set)."""
        return f"{self.prefix}:ingest:sources"

    def ingest_seen(self, source: str, webhook_id: str) -> str:
        """The job one inbound ``webhook-id`` created (replay protection); the id is hashed so any value is safe."""
        digest = hashlib.sha256(webhook_id.encode()).hexdigest()
        return f"{self.prefix}:ingest:seen:{source}:{digest}"

    # -- circuit breakers per model (docs/operations.md#circuit-breakers) ------------------------------------------

    def circuit(self, model: str) -> str:
        """A model's circuit breaker (a hash: state, failures, opened_at, open_until); no key while closed and
        healthy."""
        return f"{self.prefix}:circuit:{model}"

    def circuit_probe(self, model: str) -> str:
        """The one half-open probe let through for a model (a token with a TTL)."""
        return f"{self.prefix}:circuit:{model}:probe"

    # -- result cache and request deduplication (docs/cache.md) ----------------------------------------------------

    def cache_entry(self, cache_key: str) -> str:
        """One cached result (a JSON string, expiring after ``cache_ttl_seconds``)."""
        return f"{self.prefix}:cache:entry:{cache_key}"

    def cache_lru(self) -> str:
        """Cached results scored by a use counter: the least recently used is evicted first."""
        return f"{self.prefix}:cache:lru"

    def cache_expiry(self) -> str:
        """Cached results scored by when they expire: their ``cache_lru`` entries are dropped then."""
        return f"{self.prefix}:cache:expiry"

    def cache_clock(self) -> str:
        """The counter that orders cache uses (one clock for every API and worker process)."""
        return f"{self.prefix}:cache:clock"

    def cache_inflight(self, cache_key: str) -> str:
        """The id of the job running a cacheable request now (its leader); identical requests wait on it."""
        return f"{self.prefix}:cache:inflight:{cache_key}"

    def cache_followers(self, leader_id: str) -> str:
        """The jobs waiting on a leader's run (a set): settled when it ends."""
        return f"{self.prefix}:cache:followers:{leader_id}"

    def cache_settle(self) -> str:
        """Leaders that ended, whose followers still need settling (a list, pushed in the ending's transaction)."""
        return f"{self.prefix}:cache:settle"

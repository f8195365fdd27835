"""The result cache and request deduplication (docs/cache.md).

A deterministic request (same tenant, model version, job type and input with its defaults applied: every
``predict`` and ``embedding``, a ``completion`` or ``chat`` at temperature 0, ``top_k`` 1 or with a ``seed``, never
a streaming one) is answered from a Redis cache when an identical one succeeded within ``cache_ttl_seconds``: its
job is created already ``succeeded``, with no Celery message and no engine run. Identical requests in flight share
one run: the first is the *leader* (it holds the in-flight key); the others are *followers*, queued where no worker
takes them, until the leader ends. Then :func:`settle` gives each follower the leader's result, or, when the leader
did not succeed, sends it to run on its own.

Settling survives crashes: the leader's ending frees its in-flight key and, when followers wait on it, pushes its id
onto a list in the same transaction (``JobStore._write``); workers drain it after finishing jobs, the API after a
cancel, the reconciler on every tick.

The cache holds at most ``max_cache_entries`` results (the least recently used go first) and is shared by every API
replica and worker: entries, their LRU order and the hit, miss and eviction counters (``/metrics``) live in Redis.
Keys are scoped by tenant, so a tenant can never learn another's inputs by timing.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Callable, Sequence

import redis
from marshmallow import ValidationError

from inferno_jobs import atomic
from inferno_jobs.engine_config import EngineConfig
from inferno_jobs.errors import InfernoError, JobNotFound
from inferno_jobs.job import Job, JobStatus, JobType, now, transition
from inferno_jobs.keyspace import Keyspace
from inferno_jobs.metrics import CACHE_EVICTIONS, CACHE_HITS, CACHE_MISSES, CACHE_SHARED, Metrics
from inferno_jobs.model import ModelConfig
from inferno_jobs.schemas import INPUT_SCHEMAS, shared
from inferno_jobs.store import JobStore

# The attempt a job answered from the cache records instead of a worker; a follower records SHARED + leader id.
CACHE_WORKER = "result-cache"
SHARED_WORKER = "shared:"

ALWAYS_CACHEABLE = frozenset({JobType.PREDICT, JobType.EMBEDDING})
GENERATION = frozenset({JobType.COMPLETION, JobType.CHAT})


def canonical_input(job_type: JobType, data: dict) -> dict | None:
    """The job input with its defaults applied, or None when a job of this type and input is not cacheable."""
    if job_type not in ALWAYS_CACHEABLE | GENERATION or data.get("stream"):
        return None
    try:
        loaded = shared(INPUT_SCHEMAS[job_type]).load(data)
    except ValidationError:  # left for the worker to refuse, with its own error
        return None
    loaded.pop("stream", None)
    if job_type in GENERATION and not (loaded["temperature"] == 0 or loaded["top_k"] == 1
                                       or loaded["seed"] is not None):
        return None  # sampled: another run may give another text
    return loaded


def cache_key(tenant: str, model: str, version: str, job_type: JobType, canonical: dict) -> str:
    """The cache key of a request: a hash of tenant, model name and version, job type and canonical input."""
    text = json.dumps([tenant, model, version, job_type.value, canonical], sort_keys=True, separators=(",", ":"),
                      allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


# KEYS: entry, lru, expiry, clock, evictions metric. ARGV: cache key, value, ttl s, now, capacity, entry key prefix,
# metric field. Store one result, forget the index entries of results that expired, evict the least recently used.
_PUT = """
local use = redis.call('INCR', KEYS[4])
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
redis.call('ZADD', KEYS[2], use, ARGV[1])
redis.call('ZADD', KEYS[3], tonumber(ARGV[4]) + tonumber(ARGV[3]), ARGV[1])
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[4])) do
  redis.call('ZREM', KEYS[2], member)
  redis.call('ZREM', KEYS[3], member)
end
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if over <= 0 then return 0 end
local victims = redis.call('ZRANGE', KEYS[2], 0, over - 1)
for _, member in ipairs(victims) do
  redis.call('DEL', ARGV[6] .. member)
  redis.call('ZREM', KEYS[2], member)
  redis.call('ZREM', KEYS[3], member)
end
redis.call('HINCRBY', KEYS[5], ARGV[7], #victims)
return #victims
"""

# KEYS: entry, lru, clock, hits metric, misses metric. ARGV: cache key, metric field. The entry, or nil (counted).
_GET = """
local value = redis.call('GET', KEYS[1])
if value then
  redis.call('ZADD', KEYS[2], 'XX', redis.call('INCR', KEYS[3]), ARGV[1])
  redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
else
  redis.call('HINCRBY', KEYS[5], ARGV[2], 1)
end
return value
"""

# KEYS: an in-flight key. ARGV: the job id it should hold. Frees it only if that job still holds it.
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


class ResultCache:
    """The results of one deployment, under the live engine config's capacity and TTL."""

    def __init__(self, client: redis.Redis, keys: Keyspace, config: EngineConfig):
        self.redis = client
        self.keys = keys
        self.config = config
        self.metrics = Metrics(client, keys)
        self._put = client.register_script(_PUT)
        self._get = client.register_script(_GET)

    @staticmethod
    def _labels(job_type: JobType, model: str) -> str:
        return json.dumps([job_type.value, model], separators=(",", ":"))

    def get(self, key: str, job_type: JobType, model: str) -> Any | None:
        """The cached result of ``key`` (counted as a hit, and now the most recently used), or None (a miss)."""
        raw = self._get(keys=[self.keys.cache_entry(key), self.keys.cache_lru(), self.keys.cache_clock(),
                              self.keys.metric(CACHE_HITS.name), self.keys.metric(CACHE_MISSES.name)],
                        args=[key, self._labels(job_type, model)])
        return None if raw is None else json.loads(raw)["result"]

    def put(self, key: str, result: Any, pipe=None) -> int:
        """Keep ``result`` for ``cache_ttl_seconds``; returns how many results were evicted to make room (0 when
        queued on ``pipe``, a pipeline the caller executes)."""
        if self.config.max_cache_entries <= 0 or self.config.cache_ttl_seconds <= 0:
            return 0
        keys = [self.keys.cache_entry(key), self.keys.cache_lru(), self.keys.cache_expiry(), self.keys.cache_clock(),
                self.keys.metric(CACHE_EVICTIONS.name)]
        args = [key, json.dumps({"result": result}), self.config.cache_ttl_seconds, now(),
                self.config.max_cache_entries, self.keys.cache_entry(""), "[]"]
        if pipe is not None:  # the script's text: a registered Script costs a pipeline a SCRIPT EXISTS round trip
            pipe.eval(_PUT, len(keys), *keys, *args)
            return 0
        return int(self._put(keys=keys, args=args))

    def size(self) -> int:
        """How many results are cached now (the index entries of expired ones are dropped first)."""
        gone = self.redis.zrangebyscore(self.keys.cache_expiry(), "-inf", now())
        if gone:
            with self.redis.pipeline() as pipe:
                pipe.zrem(self.keys.cache_lru(), *gone)
                pipe.zrem(self.keys.cache_expiry(), *gone)
                pipe.execute()
        return int(self.redis.zcard(self.keys.cache_lru()))

    def stats(self) -> dict:
        """``{size, capacity, hit_count, miss_count, hit_rate, eviction_count}`` (counts since the deployment
        began: the same numbers as the ``inferno_cache_*_total`` counters of ``/metrics``)."""
        hits = int(sum(self.metrics.counter(CACHE_HITS).values()))
        misses = int(sum(self.metrics.counter(CACHE_MISSES).values()))
        return {"size": self.size(), "capacity": self.config.max_cache_entries, "hit_count": hits,
                "miss_count": misses, "hit_rate": round(hits / (hits + misses), 4) if hits + misses else 0.0,
                "eviction_count": int(sum(self.metrics.counter(CACHE_EVICTIONS).values()))}

    def clear(self) -> int:
        """Drop every cached result; returns how many there were. The counters keep counting."""
        members = [_text(m) for m in self.redis.zrange(self.keys.cache_lru(), 0, -1)]
        with self.redis.pipeline() as pipe:
            for start in range(0, len(members), 500):
                pipe.delete(*[self.keys.cache_entry(m) for m in members[start:start + 500]])
            pipe.delete(self.keys.cache_lru(), self.keys.cache_expiry())
            pipe.execute()
        return len(members)


# -- the API side: creating a job ------------------------------------------------------------------------------------

def create(store: JobStore, config: EngineConfig, job: Job, model: ModelConfig,
           idempotency: tuple[str, str] | None = None, *,
           publish: Callable[[Job], list[tuple[str, tuple]]] | None = None,
           guard: atomic.Guard | None = None) -> tuple[Job, bool]:
    """:meth:`JobStore.create` through the cache; returns ``(job, created)``. ``guard`` may refuse the creation
    (``atomic.Refused``: nothing stored), whether the cache answers the job or not.

    The job comes back ``succeeded`` when the cache answered it, queued with ``shared_run_of`` when it waits on an
    identical job in flight, or queued plainly: only then is its Celery message (``publish``) stored with it.
    """
    canonical = canonical_input(job.type, job.input) if config.enable_cache else None
    if canonical is None:
        return store.create(job, idempotency, publish=publish, guard=guard)
    key = cache_key(job.tenant, model.name, model.version, job.type, canonical)
    cache = ResultCache(store.redis, store.keys, config)
    result = cache.get(key, job.type, job.model)
    if result is not None:
        def answer(new: Job) -> None:
            transition(new, JobStatus.RUNNING, worker=CACHE_WORKER)
            transition(new, JobStatus.SUCCEEDED, result=result)
        return store.create(job, idempotency, settle=answer, guard=guard)
    job.cache_key = key
    inflight = store.keys.cache_inflight(key)
    lead_s = job.ttl_s + job.timeout_s * store.settings.max_attempts
    if not store.redis.set(inflight, job.id, nx=True, ex=lead_s):
        job.shared_run_of = _text(store.redis.get(inflight) or b"") or None
        if job.shared_run_of:
            _await_record(store, job.shared_run_of)
    following = job.shared_run_of
    try:
        job, created = store.create(job, idempotency, publish=publish, guard=guard)
    except atomic.Refused:
        if not following:  # it will not lead: identical jobs must not wait on a job that was never stored
            store.redis.eval(_RELEASE, 1, inflight, job.id)
        raise
    if created and job.shared_run_of:
        store.metrics.inc(CACHE_SHARED, (job.type.value, job.model))
    elif created and following:
        # The leader it would have followed had already ended: this job runs, and leads from now on.
        store.redis.set(inflight, job.id, ex=lead_s)
    return job, created


LEADER_WAIT_S = 0.2  # how long a follower waits for its leader's record: the leader claims the key, then stores


def _await_record(store: JobStore, job_id: str) -> None:
    """Wait, briefly, until the job ``job_id`` is stored. A leader claims the in-flight key one round trip before
    its record is written; a follower that read the key in between would take the leader for ended and run alone,
    so a burst of identical requests ran several times. Past ``LEADER_WAIT_S`` the leader was refused (its
    creation failed): the follower runs alone, as it should."""
    deadline = time.monotonic() + LEADER_WAIT_S
    key = store.keys.job(job_id)
    while not store.redis.exists(key) and time.monotonic() < deadline:
        time.sleep(0.002)


# -- the worker side: keeping results, settling followers ------------------------------------------------------------

def remember(store: JobStore, config: EngineConfig, jobs: Sequence[Job], outcomes: Sequence) -> None:
    """Keep the results among ``outcomes`` (one per job of ``jobs``: a result, or an :class:`InfernoError`) of the
    cacheable jobs, in one round trip for a micro-batch.

    A worker calls it *before* it stores the jobs' outcomes: whoever sees such a job succeeded (a synchronous caller
    woken by its event) and asks again gets a cache hit, never a second run.
    """
    if not config.enable_cache:
        return
    cache = ResultCache(store.redis, store.keys, config)
    with store.redis.pipeline(transaction=False) as pipe:
        for job, outcome in zip(jobs, outcomes):
            if job.cache_key and not isinstance(outcome, InfernoError):
                cache.put(job.cache_key, outcome, pipe=pipe)
        pipe.execute()


def settle(store: JobStore, send: Callable[[Job], None], limit: int = 100) -> list[Job]:
    """Settle the followers of leaders that ended: a leader that succeeded gives each waiting follower its result;
    otherwise each follower is queued to run on its own (``send`` sends its message). Returns the followers that
    succeeded with their leader's result (for their webhooks).

    Any process may run it at any time, concurrently: each step is idempotent (a follower that no longer waits
    is left alone) and a leader leaves the list only once its followers are settled.
    """
    todo = store.keys.cache_settle()
    leaders = [_text(i) for i in store.redis.lrange(todo, -limit, -1)]
    shared = []
    for leader_id in reversed(leaders):  # oldest first
        try:
            leader = store.get(leader_id)
        except JobNotFound:  # past retention: its followers run on their own
            leader = None
        for follower_id in sorted(_text(i) for i in store.redis.smembers(store.keys.cache_followers(leader_id))):
            if leader is not None and leader.status is JobStatus.SUCCEEDED:
                job = _share_result(store, follower_id, leader)
                if job is not None:
                    shared.append(job)
            else:
                alone = store.run_alone(follower_id)
                if alone is not None:
                    send(alone)
        with store.redis.pipeline() as pipe:
            pipe.delete(store.keys.cache_followers(leader_id))
            pipe.lrem(todo, 1, leader_id)
            pipe.execute()
    return shared


def _share_result(store: JobStore, follower_id: str, leader: Job) -> Job | None:
    """The follower, now ``succeeded`` with the leader's result; None if it no longer waited on it."""
    def change(job: Job):
        if job.status is not JobStatus.QUEUED or job.shared_run_of != leader.id:
            return False
        transition(job, JobStatus.RUNNING, worker=SHARED_WORKER + leader.id)
        transition(job, JobStatus.SUCCEEDED, result=leader.result)
    try:
        job = store.mutate(follower_id, change)
    except JobNotFound:
        return None
    return job if job.status is JobStatus.SUCCEEDED and job.attempts[-1].worker == SHARED_WORKER + leader.id \
        else None

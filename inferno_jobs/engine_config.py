"""The engine settings that change while the system runs (``GET /config``, ``POST /config``; seed 001).

Their starting values are settings (``ENGINE_*``, ``INFERNO_ONNX_THREADS``); an operator's changes are kept in one
Redis hash, so every API replica and every worker process on every host sees the same values. Readers cache what
they read for about a second (:class:`EngineConfigReader`), so a change reaches every worker within a second or two
without a Redis round trip per job.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass

import redis

from inferno_jobs.config import Settings
from inferno_jobs.keyspace import Keyspace


@dataclass(frozen=True)
class EngineConfig:
    """The live engine settings, in seed 001's names and units."""

    enable_batching: bool
    max_batch_size: int  # 0: each model's own max_batch_size
    batch_timeout: float  # seconds; 0: each model's own max_batch_wait_ms
    enable_cache: bool
    max_cache_entries: int
    cache_ttl_seconds: int
    enable_quantization: bool
    num_threads: int  # ONNX Runtime intra-op threads of sessions built from now on; 0: cores / processes
    enable_throttling: bool
    max_concurrent_requests: int

    @classmethod
    def defaults(cls, settings: Settings) -> "EngineConfig":
        """The values before any ``POST /config``: the deployment's settings."""
        return cls(enable_batching=settings.engine_enable_batching, max_batch_size=settings.engine_max_batch_size,
                   batch_timeout=settings.engine_batch_timeout, enable_cache=settings.engine_enable_cache,
                   max_cache_entries=settings.engine_max_cache_entries,
                   cache_ttl_seconds=settings.engine_cache_ttl_seconds,
                   enable_quantization=settings.engine_enable_quantization, num_threads=settings.onnx_threads,
                   enable_throttling=settings.engine_enable_throttling,
                   max_concurrent_requests=settings.engine_max_concurrent_requests)

    def to_dict(self) -> dict:
        """Field -> value, in declaration order (the ``current_config`` of ``GET /config``)."""
        return dataclasses.asdict(self)

    def batch_size_for(self, model_max_batch_size: int) -> int:
        """Jobs in one micro-batch of a model: 1 with batching off, else the override or the model's own."""
        if not self.enable_batching:
            return 1
        return self.max_batch_size or model_max_batch_size

    def batch_wait_ms_for(self, model_max_batch_wait_ms: int) -> float:
        """How long a micro-batch of a model waits for more jobs, in milliseconds."""
        return self.batch_timeout * 1000 if self.batch_timeout else model_max_batch_wait_ms


FIELDS = tuple(f.name for f in dataclasses.fields(EngineConfig))


def load(client: redis.Redis, keys: Keyspace, settings: Settings) -> EngineConfig:
    """The current engine config: the settings, with the operator's changes over them."""
    changed = {(k.decode() if isinstance(k, bytes) else k): json.loads(v)
               for k, v in client.hgetall(keys.engine_config()).items()}
    return dataclasses.replace(EngineConfig.defaults(settings), **{k: v for k, v in changed.items() if k in FIELDS})


def save(client: redis.Redis, keys: Keyspace, changes: dict) -> None:
    """Store validated ``changes`` (field -> value) for every reader; the other fields keep their values."""
    unknown = set(changes) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown engine config fields: {sorted(unknown)}")
    if changes:
        client.hset(keys.engine_config(), mapping={k: json.dumps(v) for k, v in changes.items()})


def reset(client: redis.Redis, keys: Keyspace) -> None:
    """Forget every change: back to the settings' values."""
    client.delete(keys.engine_config())


class EngineConfigReader:
    """The current config, read from Redis at most once per ``max_age_s`` (one per process)."""

    def __init__(self, client: redis.Redis, keys: Keyspace, settings: Settings, max_age_s: float = 1.0):
        self.client = client
        self.keys = keys
        self.settings = settings
        self.max_age_s = max_age_s
        self._value: EngineConfig | None = None
        self._read_at = 0.0

    def __call__(self) -> EngineConfig:
        if self._value is None or time.monotonic() - self._read_at >= self.max_age_s:
            try:
                self._value = load(self.client, self.keys, self.settings)
            except redis.RedisError:
                if self._value is None:  # Redis down before the first read: the settings' values
                    self._value = EngineConfig.defaults(self.settings)
            self._read_at = time.monotonic()
        return self._value

    def invalidate(self) -> None:
        """Read again on the next call (after this process changed the config)."""
        self._value = None

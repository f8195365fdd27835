"""Rate limits per API key, shared by every API replica through Redis.

Three fixed windows per subject (an API key id, or ``ip:<address>`` when auth is disabled and
``INFERNO_RATE_LIMIT_BY_IP`` is on): requests per minute, requests per hour and estimated tokens per minute. One
Lua script checks every window and, only if all allow it, counts the request in all of them, so concurrent requests
on several replicas can never overshoot a limit. The fourth limit, concurrent jobs, counts a tenant's queued and
running jobs (its active set, in the admission script of inferno_jobs/admission.py) when a job is submitted. A
limit of 0 means no limit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import redis

from inferno_jobs.config import Settings
from inferno_jobs.job import now
from inferno_jobs.keyspace import Keyspace

LIMIT_NAMES = ("rpm", "rph", "tpm", "concurrent")

# KEYS[i]: the current window counter of limit i. ARGV: limit, cost, ttl_s for each limit in turn.
# Returns {allowed (1/0), index of the refusing limit (0 when allowed), used_1, used_2, ...} (after counting).
_HIT = """
local used = {}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[3 * i - 2])
  local cost = tonumber(ARGV[3 * i - 1])
  used[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  if limit > 0 and cost > 0 and used[i] + math.min(cost, limit) > limit then
    local out = {0, i}
    for j = 1, #KEYS do out[#out + 1] = tonumber(redis.call('GET', KEYS[j]) or '0') end
    return out
  end
end
local out = {1, 0}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[3 * i - 2])
  local cost = tonumber(ARGV[3 * i - 1])
  if limit > 0 and cost > 0 then cost = math.min(cost, limit) end
  if cost > 0 then
    used[i] = redis.call('INCRBY', KEYS[i], cost)
    redis.call('EXPIRE', KEYS[i], tonumber(ARGV[3 * i]))
  end
  out[#out + 1] = used[i]
end
return out
"""


@dataclass(frozen=True)
class Limits:
    """One subject's limits; 0 means unlimited."""

    rpm: int = 60
    rph: int = 1000
    tpm: int = 10_000
    concurrent: int = 10

    @classmethod
    def from_settings(cls, settings: Settings) -> "Limits":
        """The deployment's defaults (``INFERNO_RATE_LIMIT_*``)."""
        return cls(rpm=settings.rate_limit_rpm, rph=settings.rate_limit_rph, tpm=settings.rate_limit_tpm,
                   concurrent=settings.rate_limit_concurrent)

    def merged(self, overrides: dict | None) -> "Limits":
        """These limits with a key's own overrides (``{"rpm": 120, ...}``) applied."""
        known = {k: int(v) for k, v in (overrides or {}).items() if k in LIMIT_NAMES and v is not None}
        return dataclasses.replace(self, **known)


@dataclass
class Decision:
    """The outcome of one request against its windows, and what its ``X-RateLimit-*`` headers say."""

    allowed: bool
    limit: int  # the requests limit the headers report: whichever of per-minute / per-hour is closer to running out
    remaining: int
    reset_at: int  # unix seconds when that window starts over
    retry_after_s: int | None = None  # set when refused
    refused_by: str | None = None
    tokens_limit: int = 0
    tokens_remaining: int = 0

    def headers(self) -> dict[str, str]:
        """The rate-limit headers of the response."""
        out = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(max(0, self.remaining)),
               "X-RateLimit-Reset": str(self.reset_at),
               "X-RateLimit-Reset-After": str(max(0, math.ceil(self.reset_at - now())))}
        if self.tokens_limit:
            out["X-RateLimit-Limit-Tokens"] = str(self.tokens_limit)
            out["X-RateLimit-Remaining-Tokens"] = str(max(0, self.tokens_remaining))
        return out


def estimate_tokens(body) -> int:
    """A request's token cost before it runs: characters of its prompt, messages or input divided by 4, plus its
    ``max_tokens``. Works on native (``input: {...}``) and OpenAI-shaped bodies; anything else costs 0."""
    if not isinstance(body, dict):
        return 0
    chars = 0
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, list):
            chars += sum(len(v) for v in value if isinstance(v, str))
    for message in body.get("messages") or []:
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            chars += len(message["content"])
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 0
    tokens = math.ceil(chars / 4) + (int(max_tokens) if isinstance(max_tokens, (int, float)) else 0)
    if isinstance(body.get("input"), dict):  # the native job body: {"type", "model", "input": {...}}
        tokens += estimate_tokens(body["input"])
    return max(0, tokens)


class RateLimiter:
    """Counts requests and tokens per subject in Redis windows."""

    WINDOWS = (("rpm", 60), ("rph", 3600), ("tpm", 60))

    def __init__(self, client: redis.Redis, keys: Keyspace):
        self.redis = client
        self.keys = keys
        self._script = client.register_script(_HIT)

    def hit(self, subject: str, limits: Limits, tokens: int = 0, at: float | None = None) -> Decision:
        """Count one request costing ``tokens`` for ``subject`` if every window allows it; say what happened."""
        t = now() if at is None else at
        starts = {name: int(t // size) * size for name, size in self.WINDOWS}
        keys, args = [], []
        for name, size in self.WINDOWS:
            keys.append(self.keys.rate_window(subject, name, starts[name]))
            args += [getattr(limits, name), tokens if name == "tpm" else 1, size + 5]
        allowed, refused, *used = (int(x) for x in self._script(keys=keys, args=args))
        used_by = dict(zip((n for n, _ in self.WINDOWS), used))
        size_of = dict(self.WINDOWS)

        def remaining(name: str) -> int:
            limit = getattr(limits, name)
            return limit - used_by[name] if limit else 1 << 30

        # Report whichever requests window is closer to running out (per minute on a tie).
        shown = "rph" if limits.rph and (not limits.rpm or remaining("rph") < remaining("rpm")) else "rpm"
        decision = Decision(allowed=bool(allowed), limit=getattr(limits, shown), remaining=remaining(shown),
                            reset_at=starts[shown] + size_of[shown], tokens_limit=limits.tpm,
                            tokens_remaining=remaining("tpm") if limits.tpm else 0)
        if not allowed:
            name = self.WINDOWS[refused - 1][0]
            decision.refused_by = name
            decision.retry_after_s = max(1, math.ceil(starts[name] + size_of[name] - t))
            if name != shown and name != "tpm":
                decision.limit, decision.remaining = getattr(limits, name), remaining(name)
                decision.reset_at = starts[name] + size_of[name]
        return decision

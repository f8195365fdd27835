"""Webhook delivery: the outbox dispatcher, one delivery attempt, the retry schedule and the delivery log.

The job store writes an event to the outbox in the same MULTI as the status change it reports. From there:

1. :class:`Outbox` hands events to Celery (``inferno.deliver_webhook`` on ``inferno.webhooks``), right after a job
   ends and on every reconciler tick. An event is *claimed* atomically (moved from the outbox list to a claimed
   set, scored by the time) before it is sent and forgotten only once Celery took it, so a process that dies in
   between loses nothing: claims older than ``claim_timeout_s`` go back to the outbox.
2. :class:`Deliverer` makes one attempt: SSRF check, Standard Webhooks signature, POST with a timeout, no
   redirects. It records the attempt in the :class:`DeliveryLog` and says whether and when to retry. The body it
   sends is the one written with the event (``inferno_jobs.webhooks.queue_body``), so every retry and replay of
   one ``webhook-id`` carries the same bytes; an event written without one (by an older version, or the batch
   script that ends a batch) gets the subject as it is at its first attempt, kept for the attempts after.

Everything here is plain Python over a Redis client, testable with fakeredis; ``workers/delivery.py`` is the
thin Celery task around :class:`Deliverer`. Events are about a *subject* (``job``, later ``batch``): the part of
the event type before the dot names it, and ``<kind>_id`` in the event carries its id.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable

import redis
import requests

from inferno_jobs.apikey import KeyRing
from inferno_jobs.attempt_deadline import deadline
from inferno_jobs.batchstore import batch_target
from inferno_jobs.client import retry_after_s  # the one Retry-After parser (the API client reads it too)
from inferno_jobs.config import Settings
from inferno_jobs.errors import JobNotFound
from inferno_jobs.job import isoformat, now
from inferno_jobs.keyspace import Keyspace
from inferno_jobs.metrics import WEBHOOK_DELIVERIES
from inferno_jobs.queue import WEBHOOK_QUEUE
from inferno_jobs.ssrf import NetworkGuard, WebhookHostUnresolved, WebhookUrlRefused, guarded_session
from inferno_jobs.store import JobStore
from inferno_jobs.webhooks import payload, sign_headers

log = logging.getLogger(__name__)

DELIVER_WEBHOOK = "inferno.deliver_webhook"
USER_AGENT = "inferno-jobs-webhooks/1"


def send_delivery(celery, event: dict, replay_of: int | None = None) -> None:
    """Queue one delivery of ``event`` on the webhooks queue, by task name."""
    celery.send_task(DELIVER_WEBHOOK, args=[event], kwargs={"replay_of": replay_of} if replay_of else {},
                     queue=WEBHOOK_QUEUE, headers={"request_id": event.get("request_id")})


# -- the outbox ------------------------------------------------------------------------------------------------

# Pop the oldest event and remember the claim in one step: nothing is ever only in a process's memory.
_CLAIM = """
local raw = redis.call('RPOP', KEYS[1])
if raw then redis.call('ZADD', KEYS[2], ARGV[1], raw) end
return raw
"""

# Put claims older than ARGV[1] (or the one claim ARGV[2]) back at the head of the outbox.
_UNCLAIM = """
local raws
if ARGV[2] ~= '' then raws = {ARGV[2]} else raws = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1]) end
local n = 0
for _, raw in ipairs(raws) do
  if redis.call('ZREM', KEYS[2], raw) == 1 then
    redis.call('RPUSH', KEYS[1], raw)
    n = n + 1
  end
end
return n
"""


class Outbox:
    """Moves events from the outbox to the delivery queue, at least once each."""

    def __init__(self, client: redis.Redis, keys: Keyspace, claim_timeout_s: float = 60):
        self.redis = client
        self.keys = keys
        self.claim_timeout_s = claim_timeout_s

    def restore_stale(self, at: float | None = None) -> int:
        """Return claims older than ``claim_timeout_s`` (their dispatcher died) to the outbox; returns how many."""
        cutoff = (at or now()) - self.claim_timeout_s
        return int(self.redis.eval(_UNCLAIM, 2, self.keys.outbox(), self.keys.outbox_claimed(), cutoff, ""))

    def dispatch(self, send: Callable[[dict], None], limit: int = 10_000) -> int:
        """Hand up to ``limit`` events to ``send``, oldest first; returns how many were sent.

        If ``send`` raises (the broker is down), the event goes back to the outbox and the error propagates.
        """
        self.restore_stale()
        sent = 0
        while sent < limit:
            raw = self.redis.eval(_CLAIM, 2, self.keys.outbox(), self.keys.outbox_claimed(), now())
            if raw is None:
                break
            try:
                event = json.loads(raw)
            except ValueError:
                log.error("dropping a malformed outbox event", extra={"event": raw[:200]})
                self.redis.zrem(self.keys.outbox_claimed(), raw)
                continue
            try:
                send(event)
            except Exception:
                self.redis.eval(_UNCLAIM, 2, self.keys.outbox(), self.keys.outbox_claimed(), 0, raw)
                raise
            self.redis.zrem(self.keys.outbox_claimed(), raw)
            sent += 1
        return sent

    def pending(self) -> int:
        """Events not yet handed to Celery (waiting or claimed)."""
        return self.redis.llen(self.keys.outbox()) + self.redis.zcard(self.keys.outbox_claimed())


def dispatch_outbox(store: JobStore, celery) -> int:
    """Send every waiting outbox event to the webhooks queue; returns how many were sent."""
    return Outbox(store.redis, store.keys).dispatch(lambda event: send_delivery(celery, event))


# -- the delivery log ------------------------------------------------------------------------------------------

class DeliveryLog:
    """Every delivery attempt of one job (or batch), oldest first; attempt ``n`` is its 1-based position."""

    def __init__(self, client: redis.Redis, keys: Keyspace):
        self.redis = client
        self.keys = keys

    def record(self, subject_id: str, entry: dict, retention_s: int) -> int:
        """Append an attempt; the log, and the bodies its events send, expire ``retention_s`` after its latest
        attempt. Returns its ``n``."""
        key = self.keys.deliveries(subject_id)
        with self.redis.pipeline() as pipe:  # MULTI: the entry and its expiry together
            pipe.rpush(key, json.dumps(entry))
            pipe.expire(key, max(1, int(retention_s)))
            pipe.expire(self.keys.webhook_bodies(subject_id), max(1, int(retention_s)))
            n = pipe.execute()[0]
        return int(n)

    def body(self, subject_id: str, webhook_id: str, build: Callable[[], str], retention_s: int) -> str:
        """The body every attempt of event ``webhook_id`` sends: the one written with the event, else ``build()``
        (the subject as it is now), kept from then on so that later attempts and replays send the same."""
        key = self.keys.webhook_bodies(subject_id)
        body = self.redis.hget(key, webhook_id)
        if body is None:
            body = build()
            with self.redis.pipeline() as pipe:  # MULTI: never a kept body without an expiry
                pipe.hsetnx(key, webhook_id, body)
                pipe.expire(key, max(1, int(retention_s)))
                kept = pipe.execute()[0]
            if not kept:  # a concurrent attempt kept its own first
                body = self.redis.hget(key, webhook_id) or body
        return body.decode() if isinstance(body, bytes) else body

    def list(self, subject_id: str) -> list[dict]:
        """Every attempt, each with its ``n``."""
        raws = self.redis.lrange(self.keys.deliveries(subject_id), 0, -1)
        return [{"n": i, **json.loads(raw)} for i, raw in enumerate(raws, start=1)]

    def get(self, subject_id: str, n: int) -> dict | None:
        """Attempt ``n``, or None."""
        if n < 1:
            return None
        raw = self.redis.lindex(self.keys.deliveries(subject_id), n - 1)
        return {"n": n, **json.loads(raw)} if raw is not None else None


# -- subjects --------------------------------------------------------------------------------------------------

@dataclass
class Target:
    """Where an event goes, and its subject as it is now (``data``: sent only for an event written without its
    body, see :meth:`DeliveryLog.body`)."""

    tenant: str
    url: str
    data: dict
    retention_s: int


def subject_of(event: dict) -> tuple[str, str]:
    """``(kind, id)`` of the job or batch an event is about: ``job.succeeded`` + ``job_id``."""
    kind = event["type"].split(".", 1)[0]
    return kind, event[f"{kind}_id"]


def job_target(store: JobStore) -> Callable[[str], Target | None]:
    """Finds the target of a job event (None once the job left retention or has no webhook)."""
    def load(job_id: str) -> Target | None:
        try:
            job = store.get(job_id)
        except JobNotFound:
            return None
        if not job.webhook or not job.webhook.get("url"):
            return None
        return Target(job.tenant, job.webhook["url"], job.to_api(), store.settings.result_retention_s)
    return load


# -- one attempt -----------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What one attempt came to: ``delivered``, ``retrying`` (in ``retry_in_s``), ``failed`` (final), or
    ``dropped`` (nothing to deliver to: the subject is gone)."""

    status: str
    retry_in_s: float | None = None
    entry: dict | None = None


class Deliverer:
    """Makes delivery attempts and decides on retries; one per process, safe to share between threads."""

    def __init__(self, store: JobStore, keyring: KeyRing, settings: Settings | None = None, *,
                 guard: NetworkGuard | None = None, targets: dict[str, Callable[[str], Target | None]] | None = None,
                 rng: Callable[[], float] = random.random):
        self.store = store
        self.keyring = keyring
        self.settings = settings or store.settings
        self.guard = guard or NetworkGuard.from_settings(self.settings)
        self.targets = targets or {"job": job_target(store),
                                   "batch": batch_target(self.settings, store.redis)}
        self.log = DeliveryLog(store.redis, store.keys)
        self.rng = rng
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if getattr(self._local, "session", None) is None:
            self._local.session = guarded_session(self.guard)
        return self._local.session

    def backoff_s(self, attempt: int, retry_after: float | None = None) -> float:
        """The wait before attempt ``attempt + 1``: exponential backoff with full jitter, at least ``Retry-After``,
        at most ``webhook_retry_cap_s`` (and half the broker's visibility timeout: see workers/delivery.py)."""
        s = self.settings
        cap = min(float(s.webhook_retry_cap_s), s.visibility_timeout_s / 2)
        delay = self.rng() * min(cap, s.webhook_retry_base_ms / 1000 * 2 ** (attempt - 1))
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, cap)

    def deliver(self, event: dict, attempt: int = 1, replay_of: int | None = None) -> Outcome:
        """Make attempt ``attempt`` of ``event`` and record it; returns what to do next."""
        kind, subject_id = subject_of(event)
        load = self.targets.get(kind)
        target = load(subject_id) if load else None
        if target is None:
            log.info("webhook event dropped: its %s is gone", kind, extra={"webhook_id": event["id"]})
            self.store.metrics.inc(WEBHOOK_DELIVERIES, (event["type"], "dropped"))
            return Outcome("dropped")
        started_at = now()
        entry = {"attempt": attempt, "webhook_id": event["id"], "event": event["type"], "url": target.url,
                 "replay_of": replay_of, "attempted_at": isoformat(started_at), "status_code": None,
                 "duration_ms": 0, "error": None, "outcome": None, "next_attempt_at": None,
                 "event_timestamp": event["timestamp"]}
        retry_after = None
        final = False
        window = None  # the attempt's deadline
        start = time.monotonic()
        try:
            secrets = self.keyring.webhook_secrets(target.tenant)
            if not secrets:
                raise WebhookUrlRefused(f"tenant {target.tenant} has no webhook secret "
                                        "(with INFERNO_AUTH=disabled, set INFERNO_WEBHOOK_SECRET)")
            body = self.log.body(subject_id, event["id"],
                                 lambda: payload(event["type"], event["timestamp"], target.data), target.retention_s)
            headers = sign_headers(secrets, event["id"], int(started_at), body)
            headers["user-agent"] = USER_AGENT
            timeout_s = self.settings.webhook_timeout_s
            # requests' timeout bounds each socket operation; the deadline bounds the whole attempt.
            with deadline(timeout_s) as window, \
                    self._session().post(target.url, data=body.encode(), headers=headers, stream=True,
                                         timeout=timeout_s, allow_redirects=False) as response:
                entry["status_code"] = code = response.status_code
                if 300 <= code < 400:
                    entry["error"] = f"HTTP {code}: redirects are not followed (Location: " \
                                     f"{response.headers.get('Location', '')[:200]})"
                elif not 200 <= code < 300:
                    entry["error"] = f"HTTP {code}"
                final = code == 410
                retry_after = retry_after_s(response.headers.get("Retry-After"))
        except WebhookHostUnresolved as exc:
            entry["error"] = exc.message  # DNS may come back: retried
        except WebhookUrlRefused as exc:
            entry["error"] = exc.message
            final = True
        except requests.Timeout:
            entry["error"] = f"timed out after {self.settings.webhook_timeout_s} s"
        except requests.RequestException as exc:
            if window is not None and window.expired:  # the deadline shut the socket down
                entry["error"] = f"timed out after {self.settings.webhook_timeout_s} s"
            else:
                entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
        entry["duration_ms"] = round((time.monotonic() - start) * 1000, 1)

        if entry["error"] is None:
            outcome = Outcome("delivered")
        elif final or attempt >= self.settings.webhook_max_attempts:
            outcome = Outcome("failed")
        else:
            outcome = Outcome("retrying", retry_in_s=self.backoff_s(attempt, retry_after))
            entry["next_attempt_at"] = isoformat(now() + outcome.retry_in_s)
        entry["outcome"] = outcome.status
        outcome.entry = entry
        self.log.record(subject_id, entry, target.retention_s)
        self.store.metrics.inc(WEBHOOK_DELIVERIES, (event["type"], outcome.status))
        log.info("webhook attempt", extra={"webhook_id": event["id"], "subject_id": subject_id, "attempt": attempt,
                                           "status_code": entry["status_code"], "outcome": outcome.status})
        return outcome

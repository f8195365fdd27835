"""Inbound signed webhooks: sources that may create jobs by sending Standard Webhooks messages.

A source is a name, a ``whsec_`` secret, the tenant its jobs belong to and optional job defaults (model, type,
priority, webhook for the result). Sources live in Redis and are managed with ``inferno-jobs ingest-sources``; the
secret is kept as is (an HMAC key must be), shown once at creation and rotatable with a grace period during which
the previous secret still verifies. ``POST /webhooks/ingest/<source>`` (api/ingest.py) verifies each message with
the ``standardwebhooks`` library, accepts each ``webhook-id`` once per source (:class:`ReplayGuard`) and turns the
event into a job request (:func:`job_request`). See docs/webhooks.md#inbound-webhooks.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

import redis
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from inferno_jobs.apikey import new_webhook_secret
from inferno_jobs.config import Settings
from inferno_jobs.errors import AuthenticationFailed, Conflict, InvalidRequest, NotFound
from inferno_jobs.job import JobType, Priority, new_id, now
from inferno_jobs.keyspace import Keyspace

# The standardwebhooks library refuses a webhook-timestamp more than 5 minutes from now, either way; it has no
# setting for it. Checked here first as well, only to tell a stale message from a bad signature in the metrics.
TOLERANCE_S = 300
# A webhook-id is remembered at least this long: a message stays verifiable for the tolerance either side of now.
MIN_REPLAY_TTL_S = 2 * TOLERANCE_S
# A claim held while its job is being created; a crashed API process frees the webhook-id after this.
CLAIM_TTL_S = 60
EVENT_TYPE = "job.create"

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_PENDING = "pending:"

# Delete KEYS[1] only while it still holds ARGV[1]: a request frees its own claim, never another's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class DeliveryRefused(AuthenticationFailed):
    """Raised when an inbound webhook does not authenticate: unknown or revoked source, missing headers, a
    timestamp outside the tolerance, or no matching signature.

    The message is the same in every case, so a refusal tells a forger nothing; ``reason`` goes to the metrics
    and the log only.
    """

    def __init__(self, reason: str):
        super().__init__("webhook refused: it does not verify for this source")
        self.reason = reason


class Replayed(Conflict):
    """Raised when a source sends a ``webhook-id`` it already sent: the first delivery's job is in ``details``."""


@dataclass
class IngestSource:
    """One inbound source (its record holds the secrets; never print it whole)."""

    name: str
    tenant: str
    secret: str
    created_at: float
    revoked_at: float | None = None
    defaults: dict = field(default_factory=dict)  # model, type, priority, webhook_url: filled in when missing
    previous_secret: str | None = None
    previous_until: float = 0.0

    @property
    def active(self) -> bool:
        """False once revoked."""
        return self.revoked_at is None

    def secrets(self, at: float | None = None) -> list[str]:
        """The secrets that verify now: the current one, and the previous one during a rotation's grace."""
        at = now() if at is None else at
        return [self.secret] + ([self.previous_secret] if self.previous_secret and self.previous_until > at else [])

    def public(self) -> dict:
        """The record without its secrets (what ``list`` shows)."""
        return {"name": self.name, "tenant": self.tenant, "created_at": self.created_at,
                "revoked_at": self.revoked_at, "defaults": self.defaults,
                "rotating_until": self.previous_until if self.previous_until > now() else None}


def check_defaults(defaults: Mapping[str, Any]) -> dict:
    """A source's job defaults, checked; raises :class:`InvalidRequest`."""
    out = {k: v for k, v in defaults.items() if v not in (None, "")}
    unknown = set(out) - {"model", "type", "priority", "webhook_url"}
    if unknown:
        raise InvalidRequest(f"unknown source defaults: {', '.join(sorted(unknown))}")
    if "type" in out and out["type"] not in {t.value for t in JobType}:
        raise InvalidRequest(f"unknown job type {out['type']!r}")
    if "priority" in out and out["priority"] not in {p.value for p in Priority}:
        raise InvalidRequest(f"unknown priority {out['priority']!r}")
    if "webhook_url" in out and not re.match(r"^https?://[^\s/]+", out["webhook_url"]):
        raise InvalidRequest("webhook_url must be an http or https URL")
    return out


class SourceRegistry:
    """Creates, finds, lists, revokes inbound sources and rotates their secrets."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.redis = client
        self.settings = settings
        self.keys = Keyspace(settings.key_prefix)

    def create(self, name: str, tenant: str, defaults: Mapping[str, Any] | None = None) -> IngestSource:
        """A new source with a new secret; a revoked source of the same name is replaced.

        Raises :class:`InvalidRequest` for a bad name or default, :class:`Conflict` when an active source has
        the name.
        """
        if not _NAME.match(name or ""):
            raise InvalidRequest("a source name is 1 to 64 of A-Z a-z 0-9 . _ -")
        if not tenant:
            raise InvalidRequest("a source needs the tenant its jobs belong to")
        source = IngestSource(name=name, tenant=tenant, secret=new_webhook_secret(), created_at=now(),
                              defaults=check_defaults(defaults or {}))
        key = self.keys.ingest_source(name)
        while True:
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(key)  # two creates of one name at once: one wins, the other sees a conflict
                    existing = self._parse(pipe.get(key))
                    if existing is not None and existing.active:
                        raise Conflict(f"source {name!r} exists; revoke it first or rotate its secret")
                    pipe.multi()
                    pipe.set(key, json.dumps(asdict(source)))
                    pipe.sadd(self.keys.ingest_sources(), name)
                    pipe.execute()
                    return source
                except redis.WatchError:
                    continue

    def get(self, name: str) -> IngestSource | None:
        """The source called ``name`` (revoked ones too), or None."""
        if not _NAME.match(name or ""):
            return None
        return self._parse(self.redis.get(self.keys.ingest_source(name)))

    def list(self) -> list[IngestSource]:
        """Every source, revoked ones included, by name."""
        names = sorted(n.decode() if isinstance(n, bytes) else n
                       for n in self.redis.smembers(self.keys.ingest_sources()))
        raws = self.redis.mget([self.keys.ingest_source(n) for n in names]) if names else []
        return [s for s in (self._parse(r) for r in raws) if s is not None]

    def revoke(self, name: str) -> IngestSource:
        """Revoke a source: its messages are refused from now on. Raises :class:`NotFound`."""
        return self._update(name, lambda s: replace(s, revoked_at=s.revoked_at or now()))

    def rotate_secret(self, name: str, grace_s: int | None = None) -> IngestSource:
        """Give an active source a new secret; the previous one still verifies for ``grace_s`` (default
        ``ingest_secret_grace_s``) so the sender can switch over without a refused message.
        Raises :class:`NotFound` (also for a revoked source)."""
        grace_s = self.settings.ingest_secret_grace_s if grace_s is None else grace_s

        def rotate(source: IngestSource) -> IngestSource:
            if not source.active:
                raise NotFound(f"source {name!r} is revoked")
            return replace(source, secret=new_webhook_secret(), previous_secret=source.secret,
                           previous_until=now() + max(0, grace_s))
        return self._update(name, rotate)

    def _update(self, name: str, change) -> IngestSource:
        key = self.keys.ingest_source(name)
        while True:
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(key)  # two rotations at once must not both keep the same "previous" secret
                    source = self._parse(pipe.get(key)) if _NAME.match(name or "") else None
                    if source is None:
                        raise NotFound(f"source {name!r} not found")
                    source = change(source)
                    pipe.multi()
                    pipe.set(key, json.dumps(asdict(source)))
                    pipe.execute()
                    return source
                except redis.WatchError:
                    continue

    @staticmethod
    def _parse(raw) -> IngestSource | None:
        return IngestSource(**json.loads(raw)) if raw else None


def verify(source: IngestSource | None, headers: Mapping[str, str], body: bytes) -> None:
    """Check one message against a source's secrets; raises :class:`DeliveryRefused` with the reason."""
    if source is None or not source.active:
        raise DeliveryRefused("unknown_source")
    headers = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp = headers.get("webhook-id"), headers.get("webhook-timestamp")
    if not (msg_id and stamp and headers.get("webhook-signature")):
        raise DeliveryRefused("missing_headers")
    try:
        if not abs(now() - float(stamp)) <= TOLERANCE_S:  # "not <=": a NaN timestamp is refused too
            raise DeliveryRefused("timestamp")
    except ValueError:
        raise DeliveryRefused("timestamp") from None
    signed = {k: headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    for secret in source.secrets():
        try:
            Webhook(secret).verify(body, signed, json_parse=False)
            return
        # A malformed signature list or a body that is not UTF-8 raise ValueError (UnicodeDecodeError, binascii).
        except (WebhookVerificationError, ValueError, TypeError):
            continue
    raise DeliveryRefused("signature")


class ReplayGuard:
    """Accepts each ``(source, webhook-id)`` once: a claim while its job is created, then the job id, kept for
    ``ingest_replay_ttl_s`` (never less than the signature's validity, twice the tolerance)."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.redis = client
        self.keys = Keyspace(settings.key_prefix)
        self.ttl_s = max(settings.ingest_replay_ttl_s, MIN_REPLAY_TTL_S)
        self._release = client.register_script(_RELEASE)

    def claim(self, source: str, webhook_id: str) -> str:
        """Claim a webhook-id; returns the claim token. Raises :class:`Replayed` when it was seen already."""
        key = self.keys.ingest_seen(source, webhook_id)
        token = _PENDING + new_id("claim")
        if self.redis.set(key, token, nx=True, ex=CLAIM_TTL_S):
            return token
        seen = self.redis.get(key)
        seen = seen.decode() if isinstance(seen, bytes) else seen
        job_id = None if seen is None or seen.startswith(_PENDING) else seen
        raise Replayed(
            f"webhook {webhook_id!r} was already received from this source"
            + (f"; it created job {job_id}" if job_id else " and is being handled"),
            details={"webhook_id": webhook_id, "job_id": job_id})

    def accept(self, source: str, webhook_id: str, job_id: str) -> None:
        """Remember the job the webhook-id created, for the replay window."""
        self.redis.set(self.keys.ingest_seen(source, webhook_id), job_id, ex=self.ttl_s)

    def release(self, source: str, webhook_id: str, token: str) -> None:
        """Forget a claim whose job was not created, so the sender's retry of that message is handled."""
        self._release(keys=[self.keys.ingest_seen(source, webhook_id)], args=[token])


def job_request(payload: Any, source: IngestSource, webhook_id: str) -> dict:
    """The ``POST /jobs`` body an event asks for, with the source's defaults filled in (not yet validated).

    The event is ``{"type": "job.create", "data": <job request>}`` (``type`` may be left out) or a bare job
    request. The job's metadata gets ``ingest_source`` and ``ingest_webhook_id``. Raises :class:`InvalidRequest`.
    """
    if not isinstance(payload, dict):
        raise InvalidRequest("the event must be a JSON object")
    if "data" in payload:
        if payload.get("type", EVENT_TYPE) != EVENT_TYPE:
            raise InvalidRequest(f"unsupported event type {payload.get('type')!r}; send {EVENT_TYPE!r}",
                                 details={"type": [f"must be {EVENT_TYPE!r}"]})
        payload = payload["data"]
        if not isinstance(payload, dict):
            raise InvalidRequest("the event's data must be a job request object",
                                 details={"data": ["must be an object"]})
    data = dict(payload)
    defaults = source.defaults
    for name in ("model", "type", "priority"):
        if name in defaults:
            data.setdefault(name, defaults[name])
    if defaults.get("webhook_url") and "webhook" not in data and "webhook_url" not in data:
        data["webhook_url"] = defaults["webhook_url"]
    metadata = data.get("metadata")
    if metadata is None or isinstance(metadata, dict):
        data["metadata"] = {**(metadata or {}), "ingest_source": source.name, "ingest_webhook_id": webhook_id}
    return data

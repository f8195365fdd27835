"""API keys and tenants. Only the SHA-256 of a key is stored; the key itself is shown once, at creation."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import asdict, dataclass

import redis

from inferno_jobs.config import Settings
from inferno_jobs.errors import AuthenticationFailed, InvalidRequest, NotFound
from inferno_jobs.job import new_id, now
from inferno_jobs.keyspace import Keyspace

KEY_PREFIX = "ij_"
LOCAL_TENANT = "local"


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@dataclass
class ApiKey:
    """An API key record (never holds the key itself)."""

    id: str
    name: str
    tenant: str
    created_at: float
    revoked_at: float | None = None
    prefix: str = ""
    admin: bool = False  # may pause, resume and purge queues (docs/operations.md)
    limits: dict | None = None  # rate-limit overrides, e.g. {"rpm": 120, "concurrent": 50}; unset: the defaults

    @property
    def active(self) -> bool:
        """False once revoked."""
        return self.revoked_at is None


class KeyRing:
    """Creates, finds, lists and revokes API keys; holds each tenant's webhook secret."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.redis = client
        self.settings = settings
        self.keys = Keyspace(settings.key_prefix)

    def create(self, name: str, tenant: str | None = None, *, admin: bool = False,
               limits: dict | None = None) -> tuple[str, ApiKey, str]:
        """A new key for ``tenant`` (a new tenant when None); returns ``(key, record, webhook_secret)``.

        ``admin`` keys may control queues; ``limits`` overrides the default rate limits for this key.
        """
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKey(id=new_id("key"), name=name, tenant=tenant or new_id("tenant"), created_at=now(),
                        prefix=key[:10], admin=admin, limits=limits or None)
        digest = hash_key(key)
        with self.redis.pipeline() as pipe:
            pipe.set(self.keys.api_key(digest), json.dumps(asdict(record)))
            pipe.hset(self.keys.api_keys(), record.id, digest)
            pipe.hsetnx(self.keys.tenant(record.tenant), "webhook_secret", new_webhook_secret())
            pipe.execute()
        return key, record, self.webhook_secrets(record.tenant)[0]

    def authenticate(self, key: str | None) -> ApiKey:
        """The active record of ``key``; raises :class:`AuthenticationFailed`."""
        if not key:
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'")
        raw = self.redis.get(self.keys.api_key(hash_key(key)))
        record = ApiKey(**json.loads(raw)) if raw else None
        if record is None or not record.active:
            raise AuthenticationFailed("invalid or revoked API key")
        return record

    def list(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        digests = self.redis.hgetall(self.keys.api_keys())
        raws = self.redis.mget([self.keys.api_key(d.decode() if isinstance(d, bytes) else d)
                                for d in digests.values()]) if digests else []
        return sorted((ApiKey(**json.loads(r)) for r in raws if r), key=lambda k: k.id)

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key by id (or by its visible prefix); raises :class:`NotFound`."""
        for record in self.list():
            if key_id in (record.id, record.prefix):
                digest = self.redis.hget(self.keys.api_keys(), record.id)
                record.revoked_at = record.revoked_at or now()
                self.redis.set(self.keys.api_key(digest.decode() if isinstance(digest, bytes) else digest),
                               json.dumps(asdict(record)))
                return record
        raise NotFound(f"API key {key_id!r} not found")

    def set_limits(self, key_id: str, limits: dict, *, replace: bool = False) -> ApiKey:
        """Change a key's rate-limit overrides (merged into the current ones unless ``replace``; a value of None
        drops an override). Raises :class:`NotFound`."""
        for record in self.list():
            if key_id in (record.id, record.prefix):
                merged = {} if replace else dict(record.limits or {})
                for name, value in limits.items():
                    if value is None:
                        merged.pop(name, None)
                    else:
                        merged[name] = int(value)
                record.limits = merged or None
                digest = self.redis.hget(self.keys.api_keys(), record.id)
                self.redis.set(self.keys.api_key(digest.decode() if isinstance(digest, bytes) else digest),
                               json.dumps(asdict(record)))
                return record
        raise NotFound(f"API key {key_id!r} not found")

    def rotate_webhook_secret(self, tenant: str, grace_s: int | None = None) -> str:
        """Give ``tenant`` a new webhook secret and return it; the previous one still signs for ``grace_s``
        (default ``webhook_secret_grace_s``), so receivers can switch over without losing a delivery.

        Raises :class:`NotFound` for an unknown tenant, :class:`InvalidRequest` for the implicit local tenant
        (its secret is ``INFERNO_WEBHOOK_SECRET``).
        """
        if tenant == LOCAL_TENANT and not self.settings.auth_enabled:
            raise InvalidRequest("with INFERNO_AUTH=disabled the secret is INFERNO_WEBHOOK_SECRET: change it there")
        key = self.keys.tenant(tenant)
        grace_s = self.settings.webhook_secret_grace_s if grace_s is None else grace_s
        secret = new_webhook_secret()
        while True:
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(key)  # two rotations at once must not both keep the same "previous" secret
                    previous = pipe.hget(key, "webhook_secret")
                    if previous is None:
                        raise NotFound(f"tenant {tenant!r} not found")
                    pipe.multi()
                    pipe.hset(key, mapping={"webhook_secret": secret, "previous_secret": previous,
                                            "previous_until": now() + max(0, grace_s)})
                    pipe.execute()
                    return secret
                except redis.WatchError:
                    continue

    def webhook_secrets(self, tenant: str) -> list[str]:
        """The tenant's webhook secrets, current first (two during a rotation's grace period)."""
        if tenant == LOCAL_TENANT and not self.settings.auth_enabled:
            return [self.settings.webhook_secret] if self.settings.webhook_secret else []
        data = self.redis.hgetall(self.keys.tenant(tenant))
        data = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in data.items()}
        secrets_ = [data["webhook_secret"]] if "webhook_secret" in data else []
        if data.get("previous_secret") and float(data.get("previous_until", 0)) > now():
            secrets_.append(data["previous_secret"])
        return secrets_

"""Uploaded files (prompt files for batches): stored where every API replica and worker can read them.

:class:`FileStore` is the interface; :class:`RedisFileStore`, the default, keeps each file in the deployment's
Redis as one hash (``meta`` JSON + ``data`` bytes) that expires ``file_retention_s`` after upload, or sooner when the
upload asks (OpenAI's ``expires_after``). Files are at most ``batch_max_file_bytes``; a tenant sees only its own
files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import redis

from inferno_jobs import paging
from inferno_jobs.config import Settings
from inferno_jobs.errors import FileNotFound, InvalidRequest
from inferno_jobs.job import new_id, now
from inferno_jobs.keyspace import Keyspace

PURPOSES = ("batch",)
MIN_TTL_S = 3600  # OpenAI's bounds for expires_after.seconds: an hour to 30 days
MAX_TTL_S = 30 * 24 * 3600
ORDERS = ("asc", "desc")


def file_ttl_s(requested_s: int | None, retention_s: int) -> int:
    """The lifetime of a new file: ``requested_s`` (OpenAI's ``expires_after.seconds``) checked against OpenAI's
    bounds and the deployment's retention, which no file outlives; the retention when None."""
    if requested_s is None:
        return retention_s
    high = min(MAX_TTL_S, retention_s)
    if not MIN_TTL_S <= requested_s <= high:
        limit = " (INFERNO_FILE_RETENTION_S)" if high < MAX_TTL_S else ""
        raise InvalidRequest(f"expires_after.seconds must be between {MIN_TTL_S} and {high}{limit}",
                             details={"field": "expires_after.seconds"})
    return requested_s


@dataclass
class StoredFile:
    """A file's metadata (OpenAI's file object fields)."""

    id: str
    tenant: str
    filename: str
    purpose: str
    bytes: int
    created_at: float
    expires_at: float

    def to_openai(self) -> dict:
        """OpenAI's file object."""
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": int(self.created_at),
                "expires_at": int(self.expires_at), "filename": self.filename, "purpose": self.purpose,
                "status": "processed", "status_details": None}


class FileStore:
    """Where uploaded files live. Subclasses store bytes; this class fixes the interface."""

    def create(self, tenant: str, filename: str, purpose: str, data: bytes, *, ttl_s: int | None = None
               ) -> StoredFile:
        """Store ``data`` for ``ttl_s`` seconds (default: the retention setting); returns its metadata."""
        raise NotImplementedError

    def get(self, file_id: str, tenant: str | None = None) -> StoredFile:
        """A file's metadata; another tenant's file raises :class:`FileNotFound` as if it did not exist."""
        raise NotImplementedError

    def content(self, file_id: str, tenant: str | None = None) -> bytes:
        """A file's bytes."""
        raise NotImplementedError

    def delete(self, file_id: str, tenant: str | None = None) -> bool:
        """Remove a file; True if it existed."""
        raise NotImplementedError

    def list(self, tenant: str, *, limit: int = 100, after: str | None = None,
             purpose: str | None = None, order: str = "desc") -> tuple[list[StoredFile], bool]:
        """A tenant's uploads, newest first (``order="asc"``: oldest first), starting after file id ``after``;
        returns the page and whether more follow."""
        raise NotImplementedError


class RedisFileStore(FileStore):
    """Files in Redis, each expiring ``file_retention_s`` after upload."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.redis = client
        self.settings = settings
        self.keys = Keyspace(settings.key_prefix)

    def create(self, tenant: str, filename: str, purpose: str, data: bytes, *, ttl_s: int | None = None
               ) -> StoredFile:
        if purpose not in PURPOSES:
            raise InvalidRequest(f"purpose must be one of {', '.join(PURPOSES)}", details={"field": "purpose"})
        ttl_s = file_ttl_s(ttl_s, self.settings.file_retention_s)
        t = now()
        record = StoredFile(id=new_id("file"), tenant=tenant, filename=filename or "upload", purpose=purpose,
                            bytes=len(data), created_at=t, expires_at=t + ttl_s)
        key = self.keys.file(record.id)
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping={"meta": json.dumps(asdict(record)), "data": data})
            pipe.expire(key, ttl_s)
            pipe.zadd(self.keys.tenant_files(tenant), {record.id: 0})
            pipe.execute()
        return record

    def get(self, file_id: str, tenant: str | None = None) -> StoredFile:
        raw = self.redis.hget(self.keys.file(file_id), "meta")
        if raw is None:
            raise FileNotFound(f"file {file_id} not found")
        record = StoredFile(**json.loads(raw))
        if tenant is not None and record.tenant != tenant:
            raise FileNotFound(f"file {file_id} not found")
        return record

    def content(self, file_id: str, tenant: str | None = None) -> bytes:
        self.get(file_id, tenant)
        data = self.redis.hget(self.keys.file(file_id), "data")
        if data is None:
            raise FileNotFound(f"file {file_id} not found")
        return data

    def delete(self, file_id: str, tenant: str | None = None) -> bool:
        record = self.get(file_id, tenant)
        with self.redis.pipeline() as pipe:
            pipe.delete(self.keys.file(file_id))
            pipe.zrem(self.keys.tenant_files(record.tenant), file_id)
            return bool(pipe.execute()[0])

    def list(self, tenant: str, *, limit: int = 100, after: str | None = None,
             purpose: str | None = None, order: str = "desc") -> tuple[list[StoredFile], bool]:
        if order not in ORDERS:
            raise InvalidRequest("order must be asc or desc", details={"field": "order"})

        def load(ids: list[str]) -> list[StoredFile | None]:
            with self.redis.pipeline(transaction=False) as pipe:
                for file_id in ids:
                    pipe.hget(self.keys.file(file_id), "meta")
                return [StoredFile(**json.loads(raw)) if raw else None for raw in pipe.execute()]

        return paging.page(self.redis, self.keys.tenant_files(tenant), limit=limit, cursor=after, load=load,
                           keep=lambda f: purpose is None or f.purpose == purpose, newest=order == "desc")

"""Standard Webhooks messages: the payload, its signature headers, and :func:`verify` for receivers.

A message is ``{"type": "job.succeeded", "timestamp": "<ISO 8601>", "data": <job or batch object>}`` sent with
``webhook-id`` (the event id, the same on every retry and replay), ``webhook-timestamp`` (unix seconds of this
attempt) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>``; one per secret, space-separated, so that during a
secret rotation both the new and the previous secret verify). Signing and verifying use the ``standardwebhooks``
library, so any Standard Webhooks receiver accepts these messages.

One event is one message: its body is serialised once, when the event is written to the outbox
(:func:`queue_body`, in the same transaction), and every attempt and replay of it sends those bytes, so the
``data`` a receiver gets is the job or batch as of the event, whatever happened to it since.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Iterable, Mapping

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from inferno_jobs.errors import AuthenticationFailed
from inferno_jobs.job import isoformat
from inferno_jobs.keyspace import Keyspace

EVENT_TYPES = ("job.succeeded", "job.failed", "job.canceled", "job.expired", "job.timed_out",
               "batch.completed", "batch.failed", "batch.canceled", "batch.expired")


class InvalidSignature(AuthenticationFailed, WebhookVerificationError):
    """Raised when a webhook's signature, timestamp or headers do not verify against the receiver's secret."""


def payload(event_type: str, timestamp: float, data: dict) -> str:
    """The body of one event: compact JSON, built once and sent byte for byte as it was signed."""
    return json.dumps({"type": event_type, "timestamp": isoformat(timestamp), "data": data},
                      separators=(",", ":"))


def queue_body(pipe, keys: Keyspace, subject_id: str, event: dict, data: dict, expiry_s: int) -> None:
    """Queue on ``pipe`` the body that every attempt and replay of ``event`` sends: ``data`` (the job or batch
    object as the event reports it), serialised now. Call it in the transaction that writes ``event`` to the
    outbox; ``expiry_s`` is the subject's own (each attempt extends it with the delivery log's)."""
    key = keys.webhook_bodies(subject_id)
    pipe.hset(key, event["id"], payload(event["type"], event["timestamp"], data))
    pipe.expire(key, max(1, int(expiry_s)))


def signature(secrets: Iterable[str], msg_id: str, timestamp: int, body: str) -> str:
    """``webhook-signature``: one ``v1,<sig>`` per secret (current first), space-separated."""
    at = datetime.fromtimestamp(int(timestamp), timezone.utc)
    signatures = [Webhook(secret).sign(msg_id, at, body) for secret in secrets]
    if not signatures:
        raise ValueError("no webhook secret to sign with")
    return " ".join(signatures)


def sign_headers(secrets: Iterable[str], msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (plus the content type)."""
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": signature(secrets, msg_id, timestamp, body),
    }


def verify(headers: Mapping[str, str], body: bytes | str, secret: str) -> dict:
    """Check a received webhook against ``secret`` and return its parsed payload.

    Raises :class:`InvalidSignature` when a header is missing, the timestamp is more than five minutes off, or
    no signature matches. Pass the body exactly as received: re-serialised JSON does not verify.
    """
    try:
        return Webhook(secret).verify(body, dict(headers))
    except (WebhookVerificationError, ValueError, TypeError) as exc:  # a malformed signature list: ValueError
        raise InvalidSignature(f"webhook did not verify: {exc}") from exc

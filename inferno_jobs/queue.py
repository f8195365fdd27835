"""Queue names: ``inferno.<pool>.<priority>``, one Redis list each, served in strict priority order."""

from __future__ import annotations

from inferno_jobs.job import Priority

POOLS = ("cpu", "gpu")
PRIORITY_ORDER = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
WEBHOOK_QUEUE = "inferno.webhooks"


def queue_name(pool: str, priority: Priority | str) -> str:
    """The Celery queue of ``pool`` at ``priority``."""
    return f"inferno.{pool}.{Priority(priority).value}"


def pool_queues(pool: str) -> list[str]:
    """A pool's queues, highest priority first: the order a worker asks for them in.

    The ``webhooks`` pool has the one delivery queue.
    """
    if pool == "webhooks":
        return [WEBHOOK_QUEUE]
    return [queue_name(pool, p) for p in PRIORITY_ORDER]


def all_queues() -> list[str]:
    """Every job queue of every pool."""
    return [q for pool in POOLS for q in pool_queues(pool)]

"""Cursor paging over a tenant's index of time-sortable ids (jobs, batches, files), newest first (or oldest first).

Each index is a lexicographic sorted set (all scores 0) of ids that sort by creation time, so a cursor is just
the last id returned. Records past their retention leave their index entries behind; a page read drops them.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import redis

T = TypeVar("T")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def newest_first(client: redis.Redis, index: str, *, limit: int, cursor: str | None,
                 load: Callable[[list[str]], list[T | None]], keep: Callable[[T], bool] = lambda item: True,
                 ) -> tuple[list[T], bool]:
    """Up to ``limit`` items of ``index`` older than ``cursor`` that ``keep`` accepts, and whether more ids follow.

    ``load(ids)`` returns one record per id (None for a record that no longer exists). "More" means the index has
    ids past the last one read; with a filter, the next page may turn out empty.
    """
    return page(client, index, limit=limit, cursor=cursor, load=load, keep=keep, newest=True)


def page(client: redis.Redis, index: str, *, limit: int, cursor: str | None,
         load: Callable[[list[str]], list[T | None]], keep: Callable[[T], bool] = lambda item: True,
         newest: bool = True) -> tuple[list[T], bool]:
    """As :func:`newest_first`, or oldest first (``newest=False``: items newer than ``cursor``, in creation order)."""
    def ids_after(bound: str, num: int) -> list[str]:
        if newest:
            return [_text(i) for i in client.zrevrangebylex(index, bound, "-", start=0, num=num)]
        return [_text(i) for i in client.zrangebylex(index, bound, "+", start=0, num=num)]

    bound = f"({cursor}" if cursor else ("+" if newest else "-")
    found: list[T] = []
    while len(found) < limit:
        ids = ids_after(bound, max(limit * 2, 50))
        if not ids:
            return found, False
        gone = []
        for item_id, item in zip(ids, load(ids)):
            bound = f"({item_id}"
            if item is None:
                gone.append(item_id)
                continue
            if keep(item):
                found.append(item)
                if len(found) == limit:
                    break
        if gone:
            client.zrem(index, *gone)
    return found, bool(ids_after(bound, 1))

"""Cursor paging over a tenant's index of time-sortable ids (jobs, batches, files), newest first.

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
    upper = f"({cursor}" if cursor else "+"
    page: list[T] = []
    while len(page) < limit:
        ids = [_text(i) for i in client.zrevrangebylex(index, upper, "-", start=0, num=max(limit * 2, 50))]
        if not ids:
            return page, False
        gone = []
        for item_id, item in zip(ids, load(ids)):
            upper = f"({item_id}"
            if item is None:
                gone.append(item_id)
                continue
            if keep(item):
                page.append(item)
                if len(page) == limit:
                    break
        if gone:
            client.zrem(index, *gone)
    return page, bool(client.zrevrangebylex(index, upper, "-", start=0, num=1))

"""Reads queued on a caller's pipeline, so that several of them share one Redis round trip.

A read of something Redis keeps (a job's queue position: ``JobStore.read_position``) is offered as a
:class:`Read`: it queues its commands on the pipeline it is given and says how many replies they take and what to
make of them. :func:`run` executes the pipeline once and hands each read its own replies, in order (a page of
``GET /jobs`` reads every position in one round trip; a new job's is read in the script call that stores it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class Read:
    """``size`` commands queued on a pipeline, and ``decode`` to turn their replies into the value read."""

    size: int
    decode: Callable[[list], Any]


def run(pipe, reads: Sequence[Read]) -> list:
    """Execute ``pipe`` (holding these reads' commands only) and decode each read from its replies, in the order
    given (a decode that raises stops the ones after it)."""
    replies = pipe.execute()
    values, start = [], 0
    for read in reads:
        values.append(read.decode(replies[start:start + read.size]))
        start += read.size
    return values

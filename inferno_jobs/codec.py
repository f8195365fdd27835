"""Compact JSON for the records inferno-jobs keeps in Redis (jobs, batch results), and the parser for the JSON
callers send, which must be storable.

orjson: about ten times faster than ``json`` for float lists (embeddings, probabilities), which a worker writes for
every job it finishes. The output is standard JSON that any parser reads (NaN and infinities become ``null``).
orjson holds integers of at most 64 bits, so :func:`parse` refuses a caller's integer outside that range where it
is read (a 400 naming it), not when its record is stored.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_LOWEST, _HIGHEST = -(1 << 63), (1 << 64) - 1  # what orjson stores: signed or unsigned 64-bit


class IntegerOutOfRange(ValueError):
    """A caller's integer that a record cannot hold."""


def _integer(text: str) -> int:
    value = int(text)
    if not _LOWEST <= value <= _HIGHEST:
        shown = text if len(text) <= 24 else f"{text[:20]}... ({len(text)} digits)"
        raise IntegerOutOfRange(f"the integer {shown} is out of range: integers must fit in 64 bits")
    return value


def parse(data: str | bytes) -> Any:
    """A caller's JSON (``json.loads``), refusing integers over 64 bits with :class:`IntegerOutOfRange`, a
    ``ValueError`` like every other reason the text is not acceptable JSON."""
    return json.loads(data, parse_int=_integer)

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def dumps(value: Any) -> bytes:
    """Compact JSON bytes of ``value``."""
    return orjson.dumps(value, option=_OPTIONS)


loads = orjson.loads

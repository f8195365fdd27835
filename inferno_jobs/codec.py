"""Compact JSON for the records inferno-jobs keeps in Redis (jobs, batch results), and the parser for the JSON
callers send, which must be storable.

orjson: about ten times faster than ``json`` for float lists (embeddings, probabilities), which a worker writes for
every job it finishes. The output is standard JSON that any parser reads (NaN and infinities become ``null``).
orjson holds integers of at most 64 bits and only valid Unicode, so :func:`parse` refuses a caller's JSON that no
record could hold where it is read (a 400 naming what), not when its record is stored (a 500).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_LOWEST, _HIGHEST = -(1 << 63), (1 << 64) - 1  # what orjson stores: signed or unsigned 64-bit
MAX_DEPTH = 64  # nesting a caller's JSON may have; orjson writes at most 254 levels, and records wrap it in theirs


class UnstorableJSON(ValueError):
    """A caller's JSON that parses but that no record can hold: an integer over 64 bits, a string with a lone
    surrogate (``"\\ud800"``: not Unicode text, and not UTF-8), or nesting deeper than :data:`MAX_DEPTH`."""


def _integer(text: str) -> int:
    value = int(text)
    if not _LOWEST <= value <= _HIGHEST:
        shown = text if len(text) <= 24 else f"{text[:20]}... ({len(text)} digits)"
        raise UnstorableJSON(f"the integer {shown} is out of range: integers must fit in 64 bits")
    return value


def _text(value: str) -> None:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UnstorableJSON(f"a string holds a lone surrogate ({value[exc.start]!r} at position {exc.start}), "
                                 "which is not text: send valid Unicode") from None


def _check(value: Any, depth: int) -> None:
    kind = type(value)
    if kind is str:
        _text(value)
    elif kind is dict or kind is list:
        if depth >= MAX_DEPTH:
            raise UnstorableJSON(f"the JSON is nested deeper than {MAX_DEPTH} levels")
        if kind is dict:
            for key, item in value.items():
                _text(key)
                _check(item, depth + 1)
        else:
            for item in value:
                _check(item, depth + 1)


def parse(data: str | bytes) -> Any:
    """A caller's JSON (``json.loads``) that a record can hold, or a ``ValueError`` like every other reason the text
    is not acceptable: :class:`UnstorableJSON` says which value cannot be kept."""
    try:
        value = json.loads(data, parse_int=_integer)
    except RecursionError:
        raise UnstorableJSON(f"the JSON is nested deeper than {MAX_DEPTH} levels") from None
    _check(value, 0)
    return value


OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def dumps(value: Any) -> bytes:
    """Compact JSON bytes of ``value``."""
    return orjson.dumps(value, option=OPTIONS)


loads = orjson.loads

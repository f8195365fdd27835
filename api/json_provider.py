"""The API's JSON: request bodies parsed by :func:`inferno_jobs.codec.parse` (JSON that no record can hold is
refused there), responses written by orjson.

orjson writes a job object holding a 384-float embedding in ~10 microseconds, ``json`` in ~170 (a queued job's: ~1
against ~6), and non-finite floats as ``null`` where ``json`` writes ``NaN``, which is not JSON. Text is written as
UTF-8, not as ``\\u`` escapes. Anything orjson refuses (an integer over 64 bits, a type only Flask's own encoder
knows) is written by Flask's.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask.json.provider import DefaultJSONProvider

from inferno_jobs import codec


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, keeping keys in order, with orjson for responses and codec.parse for requests."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        option = codec.OPTIONS | (orjson.OPT_INDENT_2 if kwargs.get("indent") else 0)
        try:
            return orjson.dumps(obj, default=self.default, option=option).decode()
        except TypeError:  # orjson.JSONEncodeError included
            return super().dumps(obj, **kwargs)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return codec.parse(s)

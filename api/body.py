"""Reading request bodies and query strings through marshmallow, with errors in the contract's shape."""

from __future__ import annotations

from typing import Any

from flask import request
from flask.json.provider import DefaultJSONProvider
from marshmallow import Schema, ValidationError

from inferno_jobs import codec
from inferno_jobs.errors import InvalidRequest


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, keeping keys in order, with request bodies parsed by :func:`inferno_jobs.codec.parse`
    (JSON that no record can hold is refused there)."""

    sort_keys = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return codec.parse(s)


def json_body() -> Any:
    """The request's JSON; malformed or missing JSON is a 400 ``INVALID_REQUEST``."""
    data = request.get_json(force=True, silent=True)
    if data is None:
        raw = request.get_data(cache=True)
        if not raw:
            raise InvalidRequest("request body is empty; send JSON")
        try:
            codec.parse(raw)
        except codec.UnstorableJSON as exc:  # valid JSON, but not storable: say which value
            raise InvalidRequest(str(exc)) from None
        except ValueError:
            pass
        raise InvalidRequest("request body must be valid JSON")
    return data


def load(schema: Schema, data: Any) -> dict:
    """``schema.load(data)``; validation errors become a 400 naming every bad field."""
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        return schema.load(data)
    except ValidationError as exc:
        fields = ", ".join(sorted(str(k) for k in exc.messages)) if isinstance(exc.messages, dict) else ""
        raise InvalidRequest(f"invalid request: {fields}" if fields else "invalid request",
                             details=exc.messages) from exc

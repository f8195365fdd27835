"""Reading request bodies and query strings through marshmallow, with errors in the contract's shape."""

from __future__ import annotations

from typing import Any

from flask import request
from marshmallow import Schema, ValidationError

from inferno_jobs import codec
from inferno_jobs.errors import InvalidRequest


def parse_json(data: str | bytes, invalid: str) -> Any:
    """``data`` parsed by :func:`inferno_jobs.codec.parse`: JSON that no record can hold is a 400
    ``INVALID_REQUEST`` saying which value, anything else that does not parse a 400 saying ``invalid``."""
    try:
        return codec.parse(data)
    except codec.UnstorableJSON as exc:
        raise InvalidRequest(str(exc)) from None
    except ValueError:  # also bytes that are not UTF-8
        raise InvalidRequest(invalid) from None


def json_body() -> Any:
    """The request's JSON; malformed or missing JSON is a 400 ``INVALID_REQUEST``."""
    data = request.get_json(force=True, silent=True)  # parsed once per request: the rate limiter reads it too
    if data is None:
        raw = request.get_data(cache=True)
        if not raw:
            raise InvalidRequest("request body is empty; send JSON")
        parse_json(raw, "request body must be valid JSON")  # raises, saying why, unless the body is null
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

"""Reading request bodies and query strings through marshmallow, with errors in the contract's shape."""

from __future__ import annotations

from typing import Any

from flask import request
from marshmallow import Schema, ValidationError

from inferno_jobs import codec
from inferno_jobs.errors import InvalidRequest


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

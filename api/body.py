"""Reading request bodies (bounded, chunked ones too) and query strings through marshmallow, with errors in the
contract's shape."""

from __future__ import annotations

from typing import IO, Any

from flask import Request as FlaskRequest
from flask import request
from marshmallow import Schema, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream

from inferno_jobs import codec
from inferno_jobs.errors import InvalidRequest


class BodyStream(LimitedStream):
    """A body without ``Content-Length`` (``Transfer-Encoding: chunked``) read up to ``limit`` bytes: one more byte
    is a 413.

    werkzeug's ``LimitedStream(is_max=True)`` stops quietly at the limit (``read()`` returns the first ``limit``
    bytes, so an over-limit JSON body parsed as truncated JSON: a misleading 400) and raises on any read after it,
    even when the body was exactly ``limit`` bytes. Here, reaching the limit looks one byte further into the
    server's stream (gunicorn and werkzeug both end a chunked body with ``b""``): a byte is a 413, none is the end.
    """

    def on_exhausted(self) -> None:
        if self._stream.read(1):
            raise RequestEntityTooLarge(f"the request body is over its limit of {self.limit:,} bytes")

    def readall(self) -> bytes:
        data = super().readall()
        if self.is_exhausted:  # readall stops at the limit without reading on: look for more here
            self.on_exhausted()
        return data


class Request(FlaskRequest):
    """Flask's request, refusing a body with a ``Content-Encoding`` (415), whose :attr:`stream` is a
    :class:`BodyStream` when the server ends the body itself
    (chunked: ``wsgi.input_terminated``) and a limit applies (``MAX_CONTENT_LENGTH``, or a route's own
    ``request.max_content_length`` as set before the body is first read)."""

    @cached_property
    def stream(self) -> IO[bytes]:
        # werkzeug hands the body over as it came: a compressed one would read as garbage (a misleading 400) or,
        # worse, as something else. Only identity bodies are taken.
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported: send the body uncompressed")
        limit = self.max_content_length
        if self.shallow or limit is None or self.content_length is not None \
                or "wsgi.input_terminated" not in self.environ:
            return super().stream  # werkzeug's: a Content-Length over the limit is a 413 before anything is read
        return BodyStream(self.environ["wsgi.input"], limit, is_max=True)


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

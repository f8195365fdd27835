"""The one place that turns errors into HTTP responses: ``{"error": {code, message, details}, request_id, timestamp}``."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from api.openai_errors import is_openai_path
from api.request_context import request_id
from inferno_jobs.errors import (STORE_FAILURES, InfernoError, InternalError, InvalidRequest, NotFound, PayloadTooLarge,
                                 StoreUnavailable)
from inferno_jobs.job import isoformat, now
from inferno_jobs.schemas import ErrorResponse

log = logging.getLogger(__name__)

_HTTP = {404: NotFound, 413: PayloadTooLarge}


def error_response(exc: InfernoError):
    """The contract's error body for ``exc``, with its status and ``Retry-After`` when it has one."""
    body = ErrorResponse().dump({
        "error": {"code": exc.code, "message": exc.message, "details": exc.details},
        "request_id": request_id(),
        "timestamp": isoformat(now()),
    })
    response = jsonify(body)
    response.status_code = exc.status
    if exc.retry_after_s is not None:
        response.headers["Retry-After"] = str(int(exc.retry_after_s))
    return response


def _openai_path() -> bool:
    return is_openai_path(request.path)


def init_app(app: Flask) -> None:
    """Register the handlers: known errors keep their code, HTTP errors map to codes, anything else is a 500."""

    @app.errorhandler(InfernoError)
    def _inferno(exc: InfernoError):
        if _openai_path():  # raised outside a /v1 blueprint's own handlers (auth, rate limits): OpenAI's shape
            from api.openai_errors import openai_error_response

            return openai_error_response(exc)
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        cls = _HTTP.get(exc.code, InvalidRequest if exc.code and exc.code < 500 else InternalError)
        error = cls(exc.description or exc.name)
        if _openai_path():  # unrouted /v1 paths answer in OpenAI's shape
            from api.openai_errors import openai_error_response

            if exc.code == 404:
                error = cls(f"endpoint not found: {request.method} {request.path}")
            response = openai_error_response(error)
        else:
            response = error_response(error)
        response.status_code = exc.code or 500
        if exc.code == 405:
            response.headers["Allow"] = ", ".join(exc.valid_methods or [])
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if isinstance(exc, STORE_FAILURES):  # Redis down or frozen: the client should retry, not report a bug
            log.warning("Redis unavailable", extra={"request_id": request_id(), "error": repr(exc)})
            return _inferno(StoreUnavailable.of(exc))
        log.exception("unhandled error", extra={"request_id": request_id()})
        return error_response(InternalError("internal error; quote the request_id when reporting it"))

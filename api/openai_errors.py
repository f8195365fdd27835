"""Errors on the OpenAI-compatible surface (``/v1``): ``{"error": {"message", "type", "param", "code"}}``.

Every ``/v1`` blueprint calls :func:`init_blueprint` so that the errors its views raise (the same
:class:`InfernoError` tree as the native API) answer in OpenAI's shape, which the official ``openai`` client turns
into its own exception classes (``NotFoundError``, ``AuthenticationError``...). The status codes, ``Retry-After``
and ``X-Request-ID`` are the same as on the native API.
"""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify
from werkzeug.exceptions import HTTPException

from api.request_context import request_id
from inferno_jobs.errors import (STORE_FAILURES, InfernoError, InternalError, InvalidRequest, NotFound, PayloadTooLarge,
                                 StoreUnavailable)

log = logging.getLogger(__name__)

# HTTP status -> OpenAI error type.
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error", 503: "server_error", 504: "timeout"}

# Routes of the OpenAI surface outside /v1: chat and completions without the version (shared/seeds/002).
UNVERSIONED_PATHS = frozenset({"/chat/completions", "/completions"})


def is_openai_path(path: str) -> bool:
    """Whether ``path`` belongs to the OpenAI-compatible surface (its errors take OpenAI's shape)."""
    return path == "/v1" or path.startswith("/v1/") or path in UNVERSIONED_PATHS


# Native error code -> OpenAI error code, where OpenAI has a well-known one.
_CODES = {"AUTHENTICATION_FAILED": "invalid_api_key", "MODEL_NOT_FOUND": "model_not_found",
          "CONTEXT_LENGTH_EXCEEDED": "context_length_exceeded", "RATE_LIMIT_EXCEEDED": "rate_limit_exceeded"}


def openai_error_body(exc: InfernoError) -> dict:
    """OpenAI's error object for ``exc`` (also used inside batch output lines)."""
    details = exc.details if isinstance(exc.details, dict) else {}
    param = details.get("field") or details.get("param")
    return {"error": {"message": exc.message, "type": _TYPES.get(exc.status, "server_error" if exc.status >= 500
                                                                    else "invalid_request_error"),
                      "param": param, "code": _CODES.get(exc.code, exc.code.lower())}}


def openai_error_response(exc: InfernoError):
    """The response for ``exc`` on ``/v1``: OpenAI's body, the native status and ``Retry-After``; ``X-Job-ID`` when
    the error is a job's (it failed, or the wait for it ended)."""
    response = jsonify(openai_error_body(exc))
    response.status_code = exc.status
    job_id = exc.details.get("job_id") if isinstance(exc.details, dict) else None
    if isinstance(job_id, str):
        response.headers["X-Job-ID"] = job_id
    if exc.retry_after_s is not None:
        response.headers["Retry-After"] = str(int(exc.retry_after_s))
    return response


def init_blueprint(bp: Blueprint) -> None:
    """Make every error raised in ``bp``'s views answer in OpenAI's shape."""

    @bp.errorhandler(InfernoError)
    def _inferno(exc: InfernoError):
        return openai_error_response(exc)

    @bp.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        cls = {404: NotFound, 413: PayloadTooLarge}.get(
            exc.code, InvalidRequest if exc.code and exc.code < 500 else InternalError)
        response = openai_error_response(cls(exc.description or exc.name))
        response.status_code = exc.code or 500
        return response

    @bp.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if isinstance(exc, STORE_FAILURES):  # Redis down or frozen: a 503 to retry, as on the native API
            log.warning("Redis unavailable", extra={"request_id": request_id(), "error": repr(exc)})
            return openai_error_response(StoreUnavailable.of(exc))
        log.exception("unhandled error", extra={"request_id": request_id()})
        return openai_error_response(InternalError("internal error; quote the X-Request-ID when reporting it"))

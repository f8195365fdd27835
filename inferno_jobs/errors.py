"""The inferno-jobs error tree.

Every error a user can see is an :class:`InfernoError` with a contract ``code`` and an HTTP ``status``.
``api/errors.py`` is the one place that turns them into responses; workers store ``code`` and ``message``
on the failed job.
"""

from __future__ import annotations

from typing import Any

import redis


class InfernoError(Exception):
    """Raised for any failure that inferno-jobs reports to a user."""

    code = "INTERNAL_ERROR"
    status = 500

    def __init__(self, message: str, details: Any = None, *, retry_after_s: int | None = None):
        super().__init__(message)
        self.message = message
        self.details = details
        self.retry_after_s = retry_after_s

    def to_dict(self) -> dict:
        """The ``{code, message}`` stored on a failed job (``details`` only when set)."""
        out = {"code": self.code, "message": self.message}
        if self.details is not None:
            out["details"] = self.details
        return out


class InvalidRequest(InfernoError):
    """Raised when a request is malformed or a field fails validation."""

    code, status = "INVALID_REQUEST", 400


class ContextLengthExceeded(InvalidRequest):
    """Raised when a prompt does not fit in the model's context."""

    code = "CONTEXT_LENGTH_EXCEEDED"


class AuthenticationFailed(InfernoError):
    """Raised when an API key is missing, unknown or revoked."""

    code, status = "AUTHENTICATION_FAILED", 401


class AuthorizationFailed(InfernoError):
    """Raised when a valid key may not perform the action."""

    code, status = "AUTHORIZATION_FAILED", 403


class NotFound(InfernoError):
    """Raised when a route does not exist."""

    code, status = "NOT_FOUND", 404


class JobNotFound(NotFound):
    """Raised when a job does not exist, has expired from retention, or belongs to another tenant."""

    code = "JOB_NOT_FOUND"


class BatchNotFound(NotFound):
    """Raised when a batch does not exist, has left retention, or belongs to another tenant."""


class FileNotFound(NotFound):
    """Raised when an uploaded file does not exist, has left retention, or belongs to another tenant."""


class ModelNotFound(NotFound):
    """Raised when a model is not in the model repository."""

    code = "MODEL_NOT_FOUND"

    def __init__(self, message: str, details: Any = None, **kwargs):
        # The repository's models under seed 000's name too, beside the native ``available``.
        if isinstance(details, dict) and "available" in details:
            details = {**details, "available_models": details["available"]}
        super().__init__(message, details, **kwargs)


class Conflict(InfernoError):
    """Raised when a request conflicts with the current state (a terminal job, a reused idempotency key)."""

    code, status = "CONFLICT", 409


class IllegalTransition(Conflict):
    """Raised when a job is asked to move between two states the state machine does not connect."""


class PayloadTooLarge(InfernoError):
    """Raised when a request body or file is over its limit."""

    code, status = "PAYLOAD_TOO_LARGE", 413


class RateLimitExceeded(InfernoError):
    """Raised when a key is over one of its rate limits."""

    code, status = "RATE_LIMIT_EXCEEDED", 429


class ModelNotLoaded(InfernoError):
    """Raised when a model cannot serve right now (load failure, open circuit, no capacity)."""

    code, status = "MODEL_NOT_LOADED", 503


class QueueFull(ModelNotLoaded):
    """Raised when a pool's queues hold ``max_queue_depth`` jobs: backpressure, 503 with ``Retry-After``."""


class CircuitOpen(ModelNotLoaded):
    """Raised when a model's circuit breaker is open (its runs keep failing): 503 with ``Retry-After``."""


class StoreUnavailable(ModelNotLoaded):
    """Raised when Redis (the job store and the broker) cannot be reached or does not answer in time: 503 with
    ``Retry-After``; nothing is wrong with the request."""

    RETRY_AFTER_S = 5

    @classmethod
    def of(cls, exc: BaseException, details: Any = None, what: str = "") -> "StoreUnavailable":
        """The error for ``exc`` (one of :data:`STORE_FAILURES`), named in the message with ``what`` (what the
        client can do about it, after a ``"; "``) and ``Retry-After`` :attr:`RETRY_AFTER_S`."""
        return cls(f"the job store (Redis) is unavailable ({exc.__class__.__name__}){what}; retry in a few seconds",
                   details=details, retry_after_s=cls.RETRY_AFTER_S)


# What redis-py raises when Redis is down, restarting or frozen (not a bad command): StoreUnavailable, not a 500.
STORE_FAILURES = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class InferenceFailed(InfernoError):
    """Raised when running a model fails."""

    code, status = "INFERENCE_FAILED", 500


class Timeout(InfernoError):
    """Raised when a run or a synchronous wait takes longer than allowed."""

    code, status = "TIMEOUT", 504


class InternalError(InfernoError):
    """Raised for failures that are inferno-jobs' own fault."""


ERRORS_BY_CODE = {
    cls.code: cls
    for cls in (InvalidRequest, ContextLengthExceeded, AuthenticationFailed, AuthorizationFailed, NotFound,
                JobNotFound, ModelNotFound, Conflict, PayloadTooLarge, RateLimitExceeded, ModelNotLoaded,
                InferenceFailed, Timeout, InternalError)
}

"""Structured logs: one JSON object per line, with the request and job a line is about.

A context (``request_id``, ``job_id``, ``tenant``, ``model``, ``priority``...) is bound per HTTP request in the API
and per task in a worker (from the job record and the task's headers), and every log line written meanwhile
carries it; ``extra={...}`` adds or overrides fields for one line. The job record and the Celery message both carry
the ``request_id`` of the request that created the job, and webhook events carry it too, so one id follows a job
from ``POST /jobs`` through the worker to its webhook deliveries. ``INFERNO_LOG_FORMAT=text`` gives plain lines.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from contextlib import contextmanager

from inferno_jobs.config import Settings
from inferno_jobs.job import isoformat

_context: contextvars.ContextVar[dict] = contextvars.ContextVar("inferno_log_context", default={})

# Attributes every LogRecord has: anything else on a record came from ``extra`` or the context.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def bind(**fields) -> contextvars.Token:
    """Add ``fields`` (None values are left out) to the log context of this thread or task; returns a token
    for :func:`reset`."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    return _context.set(merged)


def reset(token: contextvars.Token | None = None) -> None:
    """Undo a :func:`bind` (or clear the context when ``token`` is None)."""
    if token is None:
        _context.set({})
    else:
        _context.reset(token)


@contextmanager
def bound(**fields):
    """``with bound(job_id=...):`` a context for the lines logged inside."""
    token = bind(**fields)
    try:
        yield
    finally:
        reset(token)


def current() -> dict:
    """The fields bound now."""
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record (fields passed with ``extra`` win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", ...context and extra fields, "exc_info"?}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": isoformat(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """Plain lines, with the context fields appended as ``key=value``."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}
        return line + ("  " + " ".join(f"{k}={v}" for k, v in fields.items()) if fields else "")


def formatter(settings: Settings) -> logging.Formatter:
    """The formatter ``INFERNO_LOG_FORMAT`` asks for."""
    return TextFormatter() if settings.log_format == "text" else JsonFormatter()


def configure(settings: Settings, stream=None) -> logging.Handler:
    """Send the root logger's lines to ``stream`` (default stderr) in the configured format; returns the handler.

    Called by the API's WSGI entry point and by each worker (Celery's ``setup_logging`` signal).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(settings))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_inferno", False):
            root.removeHandler(old)
    handler._inferno = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    return handler

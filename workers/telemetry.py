"""Worker-side logs and tracing: JSON logs for every worker process, a log context per task, OpenTelemetry.

Imported by ``workers/tasks.py`` so that its signal handlers are connected before the worker sets up logging.
Each task binds ``job_id``, ``model`` and the ``request_id`` of the request that created the job (from the task's
headers, which ``workers.celery_app.enqueue`` sets from the job record; webhook tasks take them from their event),
so every line a task logs can be joined to the API's lines for the same request.
"""

from __future__ import annotations

import logging

from celery.signals import setup_logging, task_postrun, task_prerun, worker_process_init

from inferno_jobs import logs, tracing
from workers.runtime import runtime

_tokens: dict[str, object] = {}


@setup_logging.connect
def _setup_logging(loglevel=None, **kwargs) -> None:
    # Connected: Celery leaves logging to us. One JSON (or text) handler on the root logger, in every process.
    logs.configure(runtime.settings)
    if loglevel:
        logging.getLogger().setLevel(loglevel if isinstance(loglevel, int) else str(loglevel).upper())


@worker_process_init.connect
def _tracing_after_fork(**kwargs) -> None:
    tracing.setup(runtime.settings, "worker")  # the exporter's thread must belong to the pool child


def _header(request, name: str):
    value = getattr(request, name, None)
    if value is None and isinstance(getattr(request, "headers", None), dict):
        value = request.headers.get(name)
    return value


def task_context(task, args, kwargs) -> dict:
    """The log fields of one task run: from its headers, its keyword arguments, or its webhook event."""
    request = task.request
    fields = {"task": task.name, "task_id": request.id, "worker": request.hostname,
              "request_id": _header(request, "request_id"), "job_id": _header(request, "job_id"),
              "batch_id": _header(request, "batch_id"), "model": _header(request, "model")}
    kwargs = kwargs or {}
    fields["model"] = fields["model"] or kwargs.get("model")
    event = args[0] if args and isinstance(args[0], dict) else None
    if event is not None:  # a webhook delivery: its event names the job (or batch) and the request
        fields["request_id"] = fields["request_id"] or event.get("request_id")
        fields["job_id"] = fields["job_id"] or event.get("job_id")
        fields["batch_id"] = fields["batch_id"] or event.get("batch_id")
        fields["webhook_id"] = event.get("id")
    return fields


@task_prerun.connect
def _bind(task_id=None, task=None, args=None, kwargs=None, **_) -> None:
    try:
        _tokens[task_id] = logs.bind(**task_context(task, args, kwargs))
    except Exception:  # logging context must never fail a task
        pass


@task_postrun.connect
def _unbind(task_id=None, **_) -> None:
    token = _tokens.pop(task_id, None)
    try:
        logs.reset(token) if token is not None else None
    except ValueError:
        logs.reset()

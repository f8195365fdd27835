"""``/v1/batches``: the OpenAI Batch API over inferno-jobs batches.

``POST /v1/batches`` takes an uploaded file of OpenAI batch lines (``{"custom_id", "method": "POST", "url",
"body"}``), an ``endpoint`` (``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``) and a
``completion_window``. Every line names the same model in ``body.model``; a line naming another fails alone.
Statuses map ``queued``/``running`` -> ``in_progress`` and ``canceled`` -> ``cancelling`` while a chunk that was
running at the cancel runs on, then ``cancelled``.
"""

from __future__ import annotations


from flask import Blueprint, jsonify, request
from marshmallow import RAISE, Schema, fields, validate

from api.batches import batch_store, create_batch, file_store, limits, settling
from api.body import json_body
from api.compat_schemas import load_request
from api.deliveries import dispatch_webhooks
from api.openai_errors import init_blueprint
from api.openai_files import batch_file_id, has_lines
from api.request_context import services, tenant
from inferno_jobs.batch import COMPLETION_WINDOW, Batch, BatchStatus, window_s
from inferno_jobs.batchfile import OPENAI_ENDPOINTS, Reader
from inferno_jobs.errors import InvalidRequest
from inferno_jobs.job import JobType
from inferno_jobs.schemas import cursor_field

bp = Blueprint("openai_batches", __name__, url_prefix="/v1")
init_blueprint(bp)

_STATUS = {BatchStatus.VALIDATING: "validating", BatchStatus.QUEUED: "in_progress",
           BatchStatus.RUNNING: "in_progress", BatchStatus.COMPLETED: "completed", BatchStatus.FAILED: "failed",
           BatchStatus.CANCELED: "cancelled", BatchStatus.EXPIRED: "expired"}
_ENDPOINT_OF = {JobType.CHAT: "/v1/chat/completions", JobType.COMPLETION: "/v1/completions",
                JobType.EMBEDDING: "/v1/embeddings"}


class CreateBatch(Schema):
    """The body of ``POST /v1/batches``."""

    class Meta:
        unknown = RAISE

    input_file_id = fields.String(required=True)
    endpoint = fields.String(required=True, validate=validate.OneOf(list(OPENAI_ENDPOINTS)))
    completion_window = fields.String(required=True, validate=validate.Regexp(COMPLETION_WINDOW))
    metadata = fields.Dict(keys=fields.String(validate=validate.Length(max=64)),
                           values=fields.String(validate=validate.Length(max=512)), load_default=None,
                           allow_none=True)


class ListQuery(Schema):
    class Meta:
        unknown = RAISE

    after = cursor_field("batch")
    limit = fields.Integer(validate=validate.Range(1, 100), load_default=20)


def _ts(value: float | None) -> int | None:
    return int(value) if value is not None else None


def _in_progress_at(batch: Batch) -> int | None:
    """When the batch became ``in_progress`` (queued or running). Its file is read and validated before the
    batch is created, and the same request queues it, so that moment is ``created_at``; a batch that never left
    validating, or failed before any line ran (every line invalid), has none."""
    if batch.started_at is None and batch.status in (BatchStatus.VALIDATING, BatchStatus.FAILED):
        return None
    return int(batch.created_at)


def openai_batch(batch: Batch) -> dict:
    """OpenAI's batch object for ``batch``: a canceled batch is ``cancelling`` while a chunk that was running
    when it was canceled runs on, then ``cancelled``; an ended batch has its output and error files once no chunk
    runs."""
    canceled = batch.status is BatchStatus.CANCELED
    running = settling(batch)
    ended = batch.finished_at if batch.status.terminal else None
    files = ended is not None and not running  # an ended batch's files, once no chunk adds to them
    status = "cancelling" if canceled and running else _STATUS[batch.status]
    errors = None
    if batch.errors:
        errors = {"object": "list", "data": [{"code": e.get("code", "").lower(), "message": e.get("message"),
                                              "param": None, "line": e.get("line")} for e in batch.errors]}
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint or _ENDPOINT_OF.get(batch.type),
        "model": batch.model,
        "errors": errors,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window or "24h",
        "status": status,
        "output_file_id": batch_file_id(batch, "output") if files and has_lines(batch, "output") else None,
        "error_file_id": batch_file_id(batch, "errors") if files and has_lines(batch, "errors") else None,
        "created_at": int(batch.created_at),
        "in_progress_at": _in_progress_at(batch),
        "expires_at": int(batch.expires_at or batch.created_at + window_s("24h")),
        "finalizing_at": _ts(ended if batch.status is BatchStatus.COMPLETED else None),
        "completed_at": _ts(ended if batch.status is BatchStatus.COMPLETED else None),
        "failed_at": _ts(ended if batch.status is BatchStatus.FAILED else None),
        "expired_at": _ts(ended if batch.status is BatchStatus.EXPIRED else None),
        "cancelling_at": _ts(ended if canceled else None),
        "cancelled_at": _ts((batch.settled_at or ended) if canceled and not running else None),
        "request_counts": batch.request_counts,
        "usage": {**batch.usage, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens_details": {"reasoning_tokens": 0}},
        "metadata": batch.metadata or None,
    }


@bp.post("/batches")
def create():
    """Create a batch from an uploaded file of OpenAI batch lines."""
    owner = tenant()
    data = load_request(CreateBatch(), json_body())
    stored = file_store().get(data["input_file_id"], owner)
    content = file_store().content(stored.id, owner)
    job_type = OPENAI_ENDPOINTS[data["endpoint"]]
    parsed = Reader(job_type, limits=limits(), endpoint=data["endpoint"]).file(content, stored.filename, "jsonl")
    names = [line.model for line in parsed.lines if line.model]
    if not names:
        bad = next((line for line in parsed.lines if not line.ok), None)
        if bad is not None:  # a line's model counts once the line is valid: say why the first one is not
            raise InvalidRequest(f"no line of the file is valid; line {bad.line}: {bad.error['message']}",
                                 details={"field": "input_file_id", "line": bad.line})
        raise InvalidRequest("no line names its model in body.model", details={"field": "input_file_id"})
    model = services().models.get(names[0])
    model.check_serves(job_type)
    for line in parsed.lines:
        if line.ok and line.model and line.model != model.name:
            line.input, line.error = None, {"code": "INVALID_REQUEST", "message": (
                f"body.model {line.model!r} differs from the batch's model {model.name!r} (line "
                f"{next(l.line for l in parsed.lines if l.model == model.name)}); a batch runs one model")}
    batch = create_batch(parsed, model=model, job_type=job_type, owner=owner, metadata=data.get("metadata"),
                         input_file_id=stored.id, endpoint=data["endpoint"],
                         completion_window=data["completion_window"])
    return jsonify(openai_batch(batch))


@bp.get("/batches/<batch_id>")
def retrieve(batch_id: str):
    """One batch."""
    return jsonify(openai_batch(batch_store().get(batch_id, tenant())))


@bp.post("/batches/<batch_id>/cancel")
def cancel(batch_id: str):
    """Cancel a batch: chunks not started never run; ``cancelling`` until the chunks running finish, then
    ``cancelled``."""
    batch = batch_store().cancel(batch_id, tenant())
    dispatch_webhooks()
    return jsonify(openai_batch(batch))


@bp.get("/batches")
def list_batches():
    """The caller's batches, newest first: ``?after=&limit=``."""
    query = load_request(ListQuery(), request.args.to_dict())
    batches, cursor = batch_store().list(tenant(), limit=query["limit"], cursor=query["after"])
    data = [openai_batch(b) for b in batches]
    return jsonify({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None, "has_more": cursor is not None})

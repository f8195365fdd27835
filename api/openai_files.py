"""``/v1/files``: OpenAI-compatible file upload (purpose ``batch``) and download.

Uploaded files live in the :class:`inferno_jobs.filestore.FileStore`. A batch's output and error files are not
stored copies: ``file-<batch id>-output`` and ``file-<batch id>-errors`` are rendered from the batch's results
when read, in OpenAI's output-line shape.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request, stream_with_context

from api.batches import allow_large_upload, batch_store, file_store, limits
from api.openai_errors import init_blueprint
from api.openai_results import error_status, openai_body
from api.request_context import tenant
from inferno_jobs.batch import Batch, BatchStatus
from inferno_jobs.batchfile import read_upload
from inferno_jobs.codec import dumps
from inferno_jobs.errors import BatchNotFound, FileNotFound, InvalidRequest
from inferno_jobs.filestore import ORDERS
from inferno_jobs.job import is_id

bp = Blueprint("openai_files", __name__, url_prefix="/v1")
init_blueprint(bp)

_KINDS = ("output", "errors")


def batch_file_id(batch: Batch, kind: str) -> str:
    """The id of a batch's output (``kind="output"``) or error file."""
    return f"file-{batch.id}-{kind}"


def _batch_file(file_id: str) -> tuple[Batch, str] | None:
    """``(batch, kind)`` for a batch output/error file id, None for an uploaded file's id."""
    if not file_id.startswith("file-batch_"):
        return None
    batch_id, _, kind = file_id[len("file-"):].rpartition("-")
    if kind not in _KINDS:
        raise FileNotFound(f"file {file_id} not found")
    try:
        return batch_store().get(batch_id, tenant()), kind
    except BatchNotFound:
        raise FileNotFound(f"file {file_id} not found") from None


def output_lines(batch: Batch, kind: str):
    """OpenAI's batch output lines: succeeded lines (``output``) or the others (``errors``), in input order."""
    created = int(batch.finished_at or batch.created_at)
    for line in batch_store().lines(batch, with_input=True):
        succeeded = line["status"] == "succeeded"
        if (kind == "output") != succeeded or line["status"] == "pending":
            continue
        line_id = f"{batch.id}_{line['line']}"
        out = {"id": f"batch_req_{line_id}", "custom_id": line["custom_id"], "response": None, "error": None}
        if succeeded:
            out["response"] = {"status_code": 200, "request_id": f"req_{line_id}",
                               "body": openai_body(line["result"], model=batch.model, response_id=line_id,
                                                   created=created, prompt=(line["input"] or {}).get("prompt"))}
        elif line["status"] == "canceled":
            out["error"] = {"code": "batch_cancelled", "message": line["error"]["message"]}
        elif line["status"] == "expired":
            out["error"] = {"code": "batch_expired", "message": line["error"]["message"]}
        else:
            status, body = error_status(line["error"])
            out["response"] = {"status_code": status, "request_id": f"req_{line_id}", "body": body}
        yield dumps(out) + b"\n"


@bp.post("/files")
def upload():
    """Upload a file (multipart: ``file``, ``purpose=batch``, optionally ``expires_after[anchor]=created_at`` and
    ``expires_after[seconds]``, as the official client sends them); answers OpenAI's file object."""
    owner = tenant()
    if request.mimetype != "multipart/form-data":
        raise InvalidRequest("upload the file as multipart/form-data with 'file' and 'purpose'")
    allow_large_upload()
    upload_ = request.files.get("file")
    if upload_ is None:
        raise InvalidRequest("the 'file' part is missing", details={"field": "file"})
    purpose = request.form.get("purpose")
    if not purpose:
        raise InvalidRequest("purpose is required", details={"field": "purpose"})
    ttl_s = _expires_after_s()
    data = read_upload(upload_.stream, limits())
    record = file_store().create(owner, upload_.filename or "upload.jsonl", purpose, data, ttl_s=ttl_s)
    return jsonify(record.to_openai())


def _expires_after_s() -> int | None:
    """``expires_after``'s seconds from the form (None: not sent); only OpenAI's ``created_at`` anchor exists."""
    form = request.form
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    unknown = sorted(k for k in form if k.startswith("expires_after") and k not in
                     ("expires_after[anchor]", "expires_after[seconds]"))
    if unknown:
        raise InvalidRequest(f"Unrecognized request argument supplied: {unknown[0]} (send expires_after[anchor] "
                             "and expires_after[seconds])", details={"field": unknown[0]})
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest("expires_after.anchor must be created_at", details={"field": "expires_after.anchor"})
    try:
        return int(seconds)
    except (TypeError, ValueError):
        raise InvalidRequest("expires_after.seconds must be a whole number of seconds",
                             details={"field": "expires_after.seconds"}) from None


@bp.get("/files")
def list_files():
    """The caller's uploaded files, newest first (OpenAI's list: ``limit`` 1..10000, ``after``, ``purpose``,
    ``order`` ``desc`` (default) or ``asc``)."""
    owner = tenant()
    try:
        limit = int(request.args.get("limit", 100))
    except ValueError:
        raise InvalidRequest("limit must be a whole number", details={"field": "limit"}) from None
    if not 1 <= limit <= 10_000:
        raise InvalidRequest("limit must be between 1 and 10000", details={"field": "limit"})
    order = request.args.get("order", "desc")
    if order not in ORDERS:
        raise InvalidRequest(f"order must be asc or desc, not {order[:40]!r}", details={"field": "order"})
    after = request.args.get("after")
    if after is not None and not is_id("file", after):
        raise InvalidRequest("after must be a file id: the previous page's last one", details={"field": "after"})
    files, more = file_store().list(owner, limit=limit, after=after,
                                    purpose=request.args.get("purpose"), order=order)
    data = [f.to_openai() for f in files]
    return jsonify({"object": "list", "data": data, "has_more": more,
                    "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})


@bp.get("/files/<file_id>")
def retrieve(file_id: str):
    """A file object (uploads, and batch output/error files)."""
    owner = tenant()
    found = _batch_file(file_id)
    if found is None:
        return jsonify(file_store().get(file_id, owner).to_openai())
    batch, kind = found
    size = sum(len(line) for line in output_lines(batch, kind))
    return jsonify({"id": file_id, "object": "file", "bytes": size, "created_at": int(batch.created_at),
                    "expires_at": None, "filename": f"{batch.id}_{kind}.jsonl", "purpose": "batch_output",
                    "status": "processed", "status_details": None})


@bp.get("/files/<file_id>/content")
def content(file_id: str):
    """A file's bytes."""
    owner = tenant()
    found = _batch_file(file_id)
    if found is None:
        return Response(file_store().content(file_id, owner), mimetype="application/octet-stream")
    batch, kind = found
    return Response(stream_with_context(output_lines(batch, kind)), mimetype="application/jsonl")


@bp.delete("/files/<file_id>")
def delete(file_id: str):
    """Delete an uploaded file."""
    owner = tenant()
    if _batch_file(file_id) is not None:
        raise InvalidRequest("a batch's output file goes when the batch leaves retention")
    deleted = file_store().delete(file_id, owner)
    return jsonify({"id": file_id, "object": "file", "deleted": deleted})


def has_lines(batch: Batch, kind: str) -> bool:
    """Whether the batch's output (or error) file has any line."""
    if kind == "output":
        return batch.completed > 0
    return batch.failed > 0 or (batch.status in (BatchStatus.CANCELED, BatchStatus.EXPIRED)
                                and batch.completed + batch.failed < batch.total)

"""``/batches``: batches of prompt files (and the seeds' ``/batch``). See docs/batches.md.

A batch is read and validated line by line here (a bad line fails alone), stored compactly in Redis and fanned
out as chunks of the model's ``max_batch_size`` lines, one Celery message and one engine call per chunk.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context, url_for
from marshmallow import RAISE, Schema, fields, validate

from api.body import json_body, load
from api.deliveries import DeliveryList, dispatch_webhooks
from api.request_context import engine_config, request_id, services, tenant
from inferno_jobs import codec
from inferno_jobs.batch import COMPLETION_WINDOW, Batch, BatchStatus
from inferno_jobs.batchfile import Limits, Line, ParsedFile, Reader, input_type, read_upload
from inferno_jobs.batchstore import BatchStore
from inferno_jobs.circuit import CircuitBreaker
from inferno_jobs.delivery import DeliveryLog
from inferno_jobs.errors import Conflict, InternalError, InvalidRequest, PayloadTooLarge
from inferno_jobs.filestore import RedisFileStore
from inferno_jobs.job import JobType, Priority, new_id, now
from inferno_jobs.model import ModelConfig
from inferno_jobs.schemas import GenerationParams, WebhookUrl, cursor_field
from inferno_jobs.ssrf import NetworkGuard

bp = Blueprint("batches", __name__)

_PARAM_NAMES = tuple(GenerationParams._declared_fields)


# -- schemas -----------------------------------------------------------------------------------------------------

class BatchForm(Schema):
    """The form fields of a multipart ``POST /batches`` (the file is the ``file`` part)."""

    class Meta:
        unknown = RAISE

    model = fields.String(required=True, validate=validate.Length(min=1, max=64))
    type = fields.Enum(JobType, by_value=True, load_default=None)
    priority = fields.Enum(Priority, by_value=True, load_default=Priority.NORMAL)
    params = fields.String(load_default=None, metadata={"description": "JSON object of parameters for every line"})
    webhook_url = WebhookUrl(load_default=None)
    format = fields.String(validate=validate.OneOf(["jsonl", "txt", "csv"]), load_default=None)
    metadata = fields.String(load_default=None, metadata={"description": "JSON object"})
    completion_window = fields.String(validate=validate.Regexp(COMPLETION_WINDOW), load_default=None,
                                      metadata={"description": "e.g. 24h: lines not run by then end expired"})


class BatchRequest(Schema):
    """The JSON body of ``POST /batches`` (and the seeds' ``POST /batch``): requests inline."""

    class Meta:
        unknown = RAISE

    model = fields.String(required=True, validate=validate.Length(min=1, max=64))
    type = fields.Enum(JobType, by_value=True, load_default=None)
    priority = fields.Enum(Priority, by_value=True, load_default=Priority.NORMAL)
    requests = fields.List(fields.Raw(), required=True,
                           metadata={"description": "[{id, prompt | messages | input | features, ...params}]"})
    params = fields.Dict(load_default=None)
    webhook_url = WebhookUrl(load_default=None)
    metadata = fields.Dict(keys=fields.String(validate=validate.Length(max=64)), load_default=dict)
    completion_window = fields.String(validate=validate.Regexp(COMPLETION_WINDOW), load_default=None,
                                      metadata={"description": "e.g. 24h: lines not run by then end expired"})
    max_tokens = fields.Raw(load_default=None)
    temperature = fields.Raw(load_default=None)
    top_p = fields.Raw(load_default=None)
    top_k = fields.Raw(load_default=None)
    repetition_penalty = fields.Raw(load_default=None)
    presence_penalty = fields.Raw(load_default=None)
    frequency_penalty = fields.Raw(load_default=None)
    stop = fields.Raw(load_default=None)
    seed = fields.Raw(load_default=None)


class RequestCounts(Schema):
    total = fields.Integer()
    completed = fields.Integer()
    failed = fields.Integer()


class BatchUsage(Schema):
    input_tokens = fields.Integer(metadata={"description": "prompt tokens of the lines that succeeded"})
    output_tokens = fields.Integer(metadata={"description": "tokens they generated"})
    total_tokens = fields.Integer()


class BatchResponse(Schema):
    """The batch object."""

    id = fields.String()
    object = fields.Constant("batch")
    status = fields.String(validate=validate.OneOf([s.value for s in BatchStatus]))
    model = fields.String()
    type = fields.String()
    priority = fields.String()
    request_counts = fields.Nested(RequestCounts)
    usage = fields.Nested(BatchUsage)
    created_at = fields.String()
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    completion_window = fields.String(allow_none=True)
    expires_at = fields.String(allow_none=True)
    results_url = fields.String()
    errors_url = fields.String()
    input_file_id = fields.String(allow_none=True)
    retry_of = fields.String(allow_none=True, metadata={"description": "the batch whose failed lines this one runs"})
    retried_as = fields.String(allow_none=True, metadata={
        "description": "the batch that runs this one's failed lines (POST /batches/<id>/retry); a batch is "
                       "retried once"})
    metadata = fields.Dict()
    errors = fields.List(fields.Dict())


class BatchList(Schema):
    """A page of batches."""

    object = fields.Constant("list")
    data = fields.List(fields.Nested(BatchResponse))
    next_cursor = fields.String(allow_none=True)


class BatchListQuery(Schema):
    """Query parameters of ``GET /batches``."""

    class Meta:
        unknown = RAISE

    status = fields.String(validate=validate.OneOf([s.value for s in BatchStatus]), load_default=None)
    limit = fields.Integer(validate=validate.Range(1, 100), load_default=20)
    cursor = cursor_field("batch")


class LineError(Schema):
    line = fields.Integer()
    custom_id = fields.String()
    error = fields.Dict()


class BatchValidation(Schema):
    """``POST /batches?dry_run=true``: what would be accepted, nothing enqueued."""

    object = fields.Constant("batch.validation")
    model = fields.String()
    type = fields.String()
    format = fields.String()
    request_counts = fields.Dict(keys=fields.String(), values=fields.Integer())
    errors = fields.List(fields.Nested(LineError))


class SeedBatchResponse(Schema):
    """The seeds' ``POST /batch`` answer."""

    batch_id = fields.String()
    status = fields.String()
    total_requests = fields.Integer()
    created = fields.Integer()


class SeedBatchStatus(Schema):
    """The seeds' ``GET /batch/<id>`` answer."""

    batch_id = fields.String()
    status = fields.String()
    completed = fields.Integer()
    failed = fields.Integer()
    total = fields.Integer()
    results_url = fields.String()


SCHEMAS = {"BatchRequest": BatchRequest, "BatchForm": BatchForm, "BatchResponse": BatchResponse,
           "BatchList": BatchList, "BatchValidation": BatchValidation, "SeedBatchResponse": SeedBatchResponse,
           "SeedBatchStatus": SeedBatchStatus}


# -- shared by /batches, /batch and /v1/batches ----------------------------------------------------------------------

def batch_store() -> BatchStore:
    """The app's batch store."""
    ext = current_app.extensions
    if "inferno_batches" not in ext:
        svc = services()
        ext["inferno_batches"] = BatchStore(svc.redis, svc.settings)
    return ext["inferno_batches"]


def file_store() -> RedisFileStore:
    """The app's file store."""
    ext = current_app.extensions
    if "inferno_files" not in ext:
        svc = services()
        ext["inferno_files"] = RedisFileStore(svc.redis, svc.settings)
    return ext["inferno_files"]


def limits() -> Limits:
    return Limits.from_settings(services().settings)


def allow_large_upload() -> None:
    """Let this request's body be as large as a prompt file may be (the app-wide limit is for JSON bodies)."""
    max_file = services().settings.batch_max_file_bytes
    allowed = max(services().settings.max_request_bytes, max_file + 1024 * 1024)
    if request.content_length is not None and request.content_length > allowed:
        raise PayloadTooLarge(f"the request is {request.content_length:,} bytes; a prompt file may be at most "
                              f"{max_file:,} bytes (INFERNO_BATCH_MAX_FILE_BYTES)",
                              details={"bytes": request.content_length, "limit": max_file})
    request.max_content_length = allowed


def create_batch(parsed: ParsedFile | list[Line], *, model: ModelConfig, job_type: JobType, owner: str,
                 priority: Priority = Priority.NORMAL, webhook_url: str | None = None, metadata: dict | None = None,
                 input_file_id: str | None = None, endpoint: str | None = None,
                 completion_window: str | None = None, retry_of: str | None = None) -> Batch:
    """Store a batch and enqueue its chunks; returns it (``queued``, ``running``, or ``failed`` when no line is
    valid). If no chunk can be enqueued the batch is not accepted: an error, and nothing is kept."""
    svc = services()
    settings = svc.settings
    lines = parsed.lines if isinstance(parsed, ParsedFile) else parsed
    webhook = None
    if webhook_url:
        NetworkGuard.from_settings(settings).check_url(webhook_url, field="webhook_url")
        webhook = {"url": webhook_url, "events": None}
    # A model whose runs keep failing takes no new batch (503) until a probe succeeds.
    CircuitBreaker(svc.redis, settings).admit(model.name, token=request_id())
    batch = Batch(id=new_id("batch"), tenant=owner, model=model.name, type=job_type, priority=Priority(priority),
                  pool=model.pool, total=len(lines), created_at=now(), webhook=webhook, metadata=metadata or {},
                  input_file_id=input_file_id, endpoint=endpoint, completion_window=completion_window,
                  retry_of=retry_of, request_id=request_id())
    store = batch_store()
    # One chunk is one engine call: as many lines as a live micro-batch of the model holds (POST /config).
    batch, chunks = store.create(batch, lines, engine_config().batch_size_for(model.max_batch_size))
    if not chunks:
        dispatch_webhooks()
        return batch
    from workers.celery_app import enqueue_chunk

    for index in chunks:
        try:
            enqueue_chunk(svc.celery, batch, index, settings.batch_chunk_timeout_s)
        except Exception as exc:
            if index == 0:  # nothing sent: not accepted, not kept
                store.discard(batch)
                raise InternalError(f"the batch could not be enqueued ({exc.__class__.__name__}); it was not "
                                    "accepted, retry later", retry_after_s=5) from exc
            # Some chunks are queued: the batch is accepted, and the lines that could not be queued fail.
            error = {"code": "INTERNAL_ERROR", "message": "this line's chunk could not be enqueued"}
            for rest in chunks[index:]:
                store.fail_chunk(batch.id, rest, error)
            dispatch_webhooks()
            break
    return store.mark_queued(batch.id)


def _params_from(data: dict) -> dict:
    params = dict(data.get("params") or {})
    for name in _PARAM_NAMES:
        if data.get(name) is not None:
            params.setdefault(name, data[name])
    return params


def _read_json_batch(body: dict) -> tuple[ParsedFile, ModelConfig, JobType, dict]:
    data = load(BatchRequest(), body)
    model = services().models.get(data["model"])
    job_type = input_type(model, data["type"])
    parsed = Reader(job_type, model=model, params=_params_from(data), limits=limits()).requests(data["requests"])
    return parsed, model, job_type, data


def _read_multipart() -> tuple[ParsedFile, ModelConfig, JobType, dict]:
    form = request.form.to_dict()
    upload = request.files.get("file")
    if upload is None:
        raise InvalidRequest("a multipart batch needs its prompt file in the 'file' part", details={"field": "file"})
    data = load(BatchForm(), form)
    params = _json_field(data.get("params"), "params")
    metadata = _json_field(data.get("metadata"), "metadata")
    model = services().models.get(data["model"])
    job_type = input_type(model, data["type"])
    content = read_upload(upload.stream, limits())
    parsed = Reader(job_type, model=model, params=params, limits=limits()).file(content, upload.filename,
                                                                                data["format"])
    data["metadata"] = metadata
    return parsed, model, job_type, data


def _json_field(raw: str | None, name: str) -> dict:
    if not raw:
        return {}
    try:
        value = codec.parse(raw)
    except codec.UnstorableJSON as exc:
        raise InvalidRequest(f"{name}: {exc}", details={"field": name}) from None
    except ValueError:
        raise InvalidRequest(f"{name} must be a JSON object", details={"field": name}) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{name} must be a JSON object", details={"field": name})
    return value


def _dry_run() -> bool:
    return request.args.get("dry_run", "").lower() in {"1", "true", "yes"}


def _batch_response(batch: Batch, status: int = 200):
    response = jsonify(BatchResponse().dump(batch.to_api()))
    response.status_code = status
    if status == 202:
        response.headers["Location"] = url_for("batches.get_batch", batch_id=batch.id)
    return response


def jsonl(chunks) -> Response:
    """A streamed JSONL response from chunks of JSONL bytes."""
    return Response(stream_with_context(chunks), mimetype="application/x-ndjson")


# -- /batches --------------------------------------------------------------------------------------------------

@bp.post("/batches")
def create():
    """Submit a batch: multipart (``file`` + form fields) or JSON (``requests`` inline). 202 with the batch.

    ``?dry_run=true`` validates every line and answers 200 with the counts and per-line errors, enqueuing nothing.
    """
    owner = tenant()
    if request.mimetype == "multipart/form-data":
        allow_large_upload()
        parsed, model, job_type, data = _read_multipart()
    else:
        parsed, model, job_type, data = _read_json_batch(json_body())
    if _dry_run():
        return jsonify(BatchValidation().dump({
            "model": model.name, "type": job_type.value, "format": parsed.format, "errors": parsed.errors(),
            "request_counts": {"total": len(parsed.lines), "valid": parsed.valid, "invalid": parsed.invalid}}))
    batch = create_batch(parsed, model=model, job_type=job_type, owner=owner, priority=data["priority"],
                         webhook_url=data.get("webhook_url"), metadata=data.get("metadata"),
                         completion_window=data.get("completion_window"))
    return _batch_response(batch, 202)


@bp.get("/batches")
def list_batches():
    """The caller's batches, newest first: ``?status=&limit=&cursor=``."""
    owner = tenant()
    query = load(BatchListQuery(), request.args.to_dict())
    batches, cursor = batch_store().list(owner, **query)
    return jsonify(BatchList().dump({"data": [b.to_api() for b in batches], "next_cursor": cursor}))


@bp.get("/batches/<batch_id>")
def get_batch(batch_id: str):
    """One batch, or 404 (also for another tenant's batch)."""
    return _batch_response(batch_store().get(batch_id, tenant()))


@bp.post("/batches/<batch_id>/cancel")
def cancel(batch_id: str):
    """Cancel a batch: chunks not started never run, finished results stay readable; 409 if it already ended."""
    batch = batch_store().cancel(batch_id, tenant())
    dispatch_webhooks()
    return _batch_response(batch)


@bp.get("/batches/<batch_id>/results")
def results(batch_id: str):
    """JSONL, one line per request in input order: ``{custom_id, line, status, result | error}``."""
    batch = batch_store().get(batch_id, tenant())
    return jsonl(batch_store().jsonl(batch))


@bp.get("/batches/<batch_id>/errors")
def errors(batch_id: str):
    """JSONL of the failed lines only."""
    batch = batch_store().get(batch_id, tenant())
    return jsonl(batch_store().jsonl(batch, only_failed=True))


def settling(batch) -> bool:
    """Whether an ended (canceled or expired) batch still has a chunk running that may store results: one started
    within a chunk's hard time limit (``INFERNO_BATCH_CHUNK_TIMEOUT_S`` + the grace) of now."""
    from workers.celery_app import HARD_LIMIT_GRACE_S

    return bool(batch.chunks_running_since) and batch.settling(
        services().settings.batch_chunk_timeout_s + HARD_LIMIT_GRACE_S)


@bp.post("/batches/<batch_id>/retry")
def retry(batch_id: str):
    """A new batch of this batch's failed lines (same custom_ids and line numbers): 202 with it.

    Lines that failed validation are left out: they would fail the same way. 409 while the batch still runs,
    when no line can be retried, or when it was retried already (``details.retried_as``: retry that one).
    """
    owner = tenant()
    store = batch_store()
    parent = store.get(batch_id, owner)
    if not parent.status.terminal:
        raise Conflict(f"batch {batch_id} is still {parent.status.value}; retry it once it has ended",
                       details={"status": parent.status.value})
    if settling(parent):  # its failed lines are not all known yet, and a batch is retried once
        raise Conflict(f"batch {batch_id} is {parent.status.value} but a chunk that was running then has not stored "
                       "its results yet; retry it once it has (/v1/batches/<id> says cancelled)",
                       details={"status": parent.status.value, "chunks_running": len(parent.chunks_running_since)})
    lines, invalid = store.failed_requests(parent)
    if not lines:
        raise Conflict(f"batch {batch_id} has no failed line that can run again",
                       details={"failed_validation": invalid})
    model = services().models.get(parent.model)
    batch = create_batch(lines, model=model, job_type=parent.type, owner=owner, priority=parent.priority,
                         webhook_url=(parent.webhook or {}).get("url"), metadata=parent.metadata,
                         endpoint=parent.endpoint, retry_of=parent.id,
                         completion_window=parent.completion_window)
    return _batch_response(batch, 202)


@bp.get("/batches/<batch_id>/deliveries")
def deliveries(batch_id: str):
    """Every webhook delivery attempt of a batch, oldest first."""
    batch = batch_store().get(batch_id, tenant())
    log = DeliveryLog(services().redis, batch_store().keys)
    return jsonify(DeliveryList().dump({"batch_id": batch.id, "data": log.list(batch.id)}))


# -- the seeds' /batch -------------------------------------------------------------------------------------------

@bp.post("/batch")
def seed_create():
    """The seeds' batch submission: ``{model, requests: [{id, prompt}], max_tokens, webhook_url}``."""
    owner = tenant()
    parsed, model, job_type, data = _read_json_batch(json_body())
    batch = create_batch(parsed, model=model, job_type=job_type, owner=owner, priority=data["priority"],
                         webhook_url=data.get("webhook_url"), metadata=data.get("metadata"))
    status = "processing" if not batch.status.terminal else batch.status.value
    response = jsonify(SeedBatchResponse().dump({"batch_id": batch.id, "status": status,
                                                 "total_requests": batch.total, "created": int(batch.created_at)}))
    response.status_code = 202
    return response


@bp.get("/batch/<batch_id>")
def seed_get(batch_id: str):
    """The seeds' batch status."""
    return jsonify(SeedBatchStatus().dump(batch_store().get(batch_id, tenant()).to_seed()))


@bp.get("/batch/<batch_id>/results")
def seed_results(batch_id: str):
    """The same JSONL as ``/batches/<id>/results``."""
    return results(batch_id)

"""The seeds' tabular endpoints (shared/seeds/001): ``POST /predict``, ``POST /predict/batch`` and
``POST /predict/async``, on the repository's ``predict`` models (``iris``, ``diabetes``...).

The seed served one loaded model; here ``model`` names it, and may be left out when ``INFERNO_DEFAULT_PREDICT_MODEL``
is set or the repository holds a single predict model. ``predictions`` is one list per row, as in the seed.
"""

from __future__ import annotations

import math
import time
import uuid

from flask import Blueprint, jsonify

from api.body import json_body
from api.compat_schemas import PredictAsyncRequest, PredictBatchRequest, PredictRequest, load_request
from api.jobs import check_input_for_model, position_of, submit
from api.request_context import services, tenant
from api.sync_jobs import find_model, job_error, submit_now, wait
from api.versioning import deprecated
from inferno_jobs.errors import InvalidRequest
from inferno_jobs.job import Job, JobStatus, JobType, Priority, isoformat, now

bp = Blueprint("seed_predict", __name__)


def predict_model(name: str | None):
    """The model a predict request runs on; raises 400 when none is named and none is the default."""
    svc = services()
    if not name:
        name = svc.settings.default_predict_model
    if not name:
        candidates = [m.name for m in svc.models.all() if m.type == "predict"]
        if len(candidates) != 1:
            raise InvalidRequest("model is required (the repository has several predict models)",
                                 details={"field": "model", "available": candidates})
        name = candidates[0]
    return find_model(name, JobType.PREDICT)


def _predict_data(model, features: list) -> dict:
    data = {"type": JobType.PREDICT, "model": model.name, "input": {"features": features}}
    check_input_for_model(model, data)
    return data


def _outcome(job: Job, request_id: str | None) -> dict:
    """One prediction in the seed's shape: ``{request_id, success, predictions, error, metadata, timestamp}``."""
    body = {"request_id": request_id or job.id, "success": job.status is JobStatus.SUCCEEDED, "predictions": None,
            "error": None, "metadata": {"job_id": job.id, "model": job.model}, "timestamp": isoformat(now())}
    if job.started_at and job.finished_at:
        body["metadata"]["inference_time_ms"] = round((job.finished_at - job.started_at) * 1000, 3)
    if body["success"]:
        result = job.result
        body["predictions"] = [[p] for p in result["predictions"]]
        for key in ("probabilities", "labels"):
            if key in result:
                body["metadata"][key] = result[key]
    else:
        error = job_error(job)
        body["error"] = error.message
        body["metadata"]["error_code"] = error.code
    return body


@bp.post("/predict")
def predict():
    """Predict synchronously: ``{"features": [[...]], "request_id"?, "model"?}``."""
    owner = tenant()
    data = load_request(PredictRequest(), json_body())
    model = predict_model(data.get("model"))
    (job,) = wait([submit_now(_predict_data(model, data["features"]), owner)])
    if job.status is not JobStatus.SUCCEEDED:
        raise job_error(job)
    return jsonify(_outcome(job, data.get("request_id")))


@bp.post("/predict/batch")
@deprecated(since="2026-11-25", sunset="2027-05-31", link="docs/seeds.md#post-predictbatch--one-job-per-item")
def predict_batch():
    """One job per batch item, all high priority: a worker runs them as one micro-batch."""
    owner = tenant()
    data = load_request(PredictBatchRequest(), json_body())
    model = predict_model(data.get("model"))
    items = [_predict_data(model, rows) for rows in data["batch"]]
    started = time.monotonic()
    jobs = wait([submit_now(item, owner) for item in items])
    total_ms = (time.monotonic() - started) * 1000
    ids = data.get("request_ids") or [None] * len(jobs)
    results = [_outcome(job, rid) for job, rid in zip(jobs, ids)]
    succeeded = sum(r["success"] for r in results)
    return jsonify({
        "batch_id": str(uuid.uuid4()), "results": results,
        "metadata": {"total_time_ms": round(total_ms, 3), "batch_size": len(jobs),
                     "success_rate": succeeded / len(jobs), "avg_time_per_item_ms": round(total_ms / len(jobs), 3)},
        "timestamp": isoformat(now()),
    })


@bp.post("/predict/async")
def predict_async():
    """Queue a prediction and answer 202 ``{job_id, status: "pending", eta_seconds, timestamp}`` at once; read
    it at ``GET /jobs/<job_id>``."""
    owner = tenant()
    data = load_request(PredictAsyncRequest(), json_body())
    model = predict_model(data.get("model"))
    body = _predict_data(model, data["features"])
    body["priority"] = Priority(data["priority"])
    if data.get("request_id"):
        body["metadata"] = {"request_id": data["request_id"]}
    if data.get("timeout_ms"):
        body["timeout_s"] = max(1, math.ceil(data["timeout_ms"] / 1000))
    job, _ = submit(body, owner=owner)
    position = position_of(job)
    # A rough estimate: the jobs ahead of it, at a few milliseconds each once a worker takes them in micro-batches.
    eta = round(0.05 + 0.005 * (position or 0), 3)
    response = jsonify({"job_id": job.id, "status": "pending", "eta_seconds": eta, "timestamp": isoformat(now())})
    response.status_code = 202
    response.headers["Location"] = f"/jobs/{job.id}"
    return response

"""The seeds' ``POST /feature-importance`` (shared/seeds/001): the per-feature importance of one tabular row.

It runs as a ``feature_importance`` job (inferno_jobs/importance.py), high priority, that the API waits for like
``POST /predict``; ``POST /jobs`` with that type queues the same job asynchronously.
"""

from __future__ import annotations

from flask import Blueprint, jsonify
from marshmallow import Schema, fields, validate, validates_schema

from api.body import json_body
from api.compat_schemas import CompatSchema, check_rows, load_request
from api.request_context import tenant
from api.seed_predict import predict_model
from api.sync_jobs import find_model, job_error, submit_now, wait
from inferno_jobs import importance
from inferno_jobs.job import JobStatus, JobType, isoformat, now
from inferno_jobs.schemas import FeatureImportanceInput

bp = Blueprint("feature_importance", __name__)


class FeatureImportanceRequest(CompatSchema):
    """``{"features": [[...]], "model"?, "n_repeats"?, "seed"?, "request_id"?}``: one row to explain."""

    features = fields.List(fields.List(fields.Float(allow_nan=False)), required=True,
                           error_messages={"required": "features is required", "null": "features is required"},
                           validate=validate.Length(equal=1, error="features must hold exactly one row: [[...]]"))
    model = fields.String(allow_none=True)
    n_repeats = fields.Integer(strict=True, load_default=importance.DEFAULT_N_REPEATS, validate=validate.Range(
        1, importance.MAX_N_REPEATS, error=f"n_repeats must be between 1 and {importance.MAX_N_REPEATS}"))
    seed = fields.Integer(strict=True, allow_none=True, validate=validate.Range(
        0, importance.SEED_LIMIT - 1, error=f"seed must be between 0 and {importance.SEED_LIMIT - 1}"))
    request_id = fields.String(allow_none=True, validate=validate.Length(max=128))

    @validates_schema
    def _rows(self, data, **kwargs):
        check_rows(data.get("features") or [], "features")  # [[]] is a 400, as on POST /predict


class FeatureImportanceResponse(Schema):
    """The seed's answer, with the job that computed it and how."""

    success = fields.Boolean()
    feature_importance = fields.Dict(keys=fields.String(), values=fields.Float())
    baseline_prediction = fields.List(fields.Float())
    timestamp = fields.String()
    request_id = fields.String()
    job_id = fields.String()
    model = fields.String()
    method = fields.String()
    n_repeats = fields.Integer()
    seed = fields.Integer()
    metadata = fields.Dict()


@bp.post("/feature-importance")
def feature_importance():
    """Explain one row synchronously; 400 for a non-tabular model or a row of the wrong length."""
    owner = tenant()
    data = load_request(FeatureImportanceRequest(), json_body())
    model = find_model(data["model"], JobType.FEATURE_IMPORTANCE) if data.get("model") else predict_model(None)
    # The job's input as POST /jobs stores it (a missing seed is drawn now, so the job is reproducible); through
    # load_request, so a row the job schema refuses is a 400 like any other field.
    job_input = load_request(FeatureImportanceInput(), {"features": data["features"], "n_repeats": data["n_repeats"],
                                                        "seed": data.get("seed")})
    (job,) = wait([submit_now({"type": JobType.FEATURE_IMPORTANCE, "model": model.name, "input": job_input}, owner)])
    if job.status is not JobStatus.SUCCEEDED:
        raise job_error(job)
    result = job.result
    metadata = {key: result[key] for key in ("raw_importance", "output", "prediction", "label", "background")
                if key in result}
    if job.started_at and job.finished_at:
        metadata["inference_time_ms"] = round((job.finished_at - job.started_at) * 1000, 3)
    return jsonify(FeatureImportanceResponse().dump({
        "success": True, "feature_importance": result["feature_importance"],
        "baseline_prediction": result["baseline_prediction"], "timestamp": isoformat(now()),
        "request_id": data.get("request_id") or job.id, "job_id": job.id, "model": job.model,
        "method": result["method"], "n_repeats": result["n_repeats"], "seed": result["seed"], "metadata": metadata}))


# path -> method -> (summary, request schema name or None, success status, response schema name or None, error
# statuses), merged into GET /openapi.json by api/openapi.py; SCHEMAS: name -> marshmallow schema class.
ROUTES: dict = {
    "/feature-importance": {"post": ("Per-feature importance of one tabular row by permutation (the seeds' shape)",
                                     "FeatureImportanceRequest", 200, "FeatureImportanceResponse",
                                     (400, 401, 404, 429, 503, 504))},
}
SCHEMAS: dict = {"FeatureImportanceRequest": FeatureImportanceRequest,
                 "FeatureImportanceResponse": FeatureImportanceResponse}

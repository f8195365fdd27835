"""Seed 001's model endpoints (docs/seeds.md): ``POST /models/load``, ``DELETE /models`` and ``POST /validate``.

They answer in the seed's shapes and do what ``POST /models/<id>/load``, ``/unload`` and ``/validate`` do
(``api/models.py``): every worker process of the model's pool loads, drops or validates it.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, jsonify, request
from marshmallow import Schema, fields

from api.body import json_body, load
from api.models import apply_command, describe, loaded_models, run_validation
from api.auth import require_operator_or_key
from api.controls import require_admin
from api.request_context import services
from inferno_jobs.errors import InvalidRequest, ModelNotFound
from inferno_jobs.job import isoformat, now
from inferno_jobs.model import ModelConfig

bp = Blueprint("seed_models", __name__)

# The seed's model types, as this project's: its tabular frameworks are exported to ONNX as predict models.
MODEL_TYPES = {"predict": "predict", "embedding": "embedding", "completion": "completion",
               "sklearn": "predict", "xgboost": "predict", "lightgbm": "predict", "ensemble": "predict"}


class SeedModelLoad(Schema):
    """``POST /models/load``."""

    model_path = fields.String(required=True, metadata={"description": "a model directory name, or a path inside "
                                                                       "MODEL_DIR (relative to it, or absolute)"})
    model_type = fields.String(allow_none=True, metadata={"description": "checked against the model's type"})
    compile_model = fields.Boolean(allow_none=True, metadata={"description": "accepted; ONNX Runtime always "
                                                                             "optimizes a model's graph"})


class SeedModelLoadResponse(Schema):
    """``POST /models/load``'s answer: 200 once loaded, 202 while workers are still loading."""

    success = fields.Boolean()
    message = fields.String()
    model_path = fields.String()
    model_type = fields.String()
    model_info = fields.Dict(keys=fields.String())


class SeedUnloadResponse(Schema):
    """``DELETE /models``: the models asked to unload."""

    success = fields.Boolean()
    message = fields.String()
    models = fields.List(fields.String())


class SeedValidateRequest(Schema):
    """``POST /validate``: the model to validate (default: INFERNO_DEFAULT_PREDICT_MODEL, or the only model)."""

    model = fields.String(allow_none=True)


class SeedValidateResponse(Schema):
    """``POST /validate``: a sample run in a worker of the model's pool."""

    success = fields.Boolean()
    model_type = fields.String()
    results = fields.Dict(keys=fields.String())
    timestamp = fields.String()


ROUTES: dict = {
    "/models/load": {"post": ("Load a model on every worker (seed 001's shape; admin key)", "SeedModelLoad", 200,
                              "SeedModelLoadResponse", (400, 401, 403, 404))},
    "/models": {"delete": ("Unload a model (?model=<id>) or every loaded model (seed 001's shape; admin key)", None,
                           200, "SeedUnloadResponse", (401, 403, 404))},
    "/validate": {"post": ("Validate a model in a worker (seed 001's shape)", "SeedValidateRequest", 200,
                           "SeedValidateResponse", (400, 401, 404, 504))},
}
SCHEMAS: dict = {"SeedModelLoad": SeedModelLoad, "SeedModelLoadResponse": SeedModelLoadResponse,
                 "SeedUnloadResponse": SeedUnloadResponse, "SeedValidateRequest": SeedValidateRequest,
                 "SeedValidateResponse": SeedValidateResponse}


def resolve_model_path(model_path: str) -> ModelConfig:
    """The model a seed ``model_path`` names: ``iris``, ``iris/model.onnx``, ``<MODEL_DIR>/iris`` or an absolute
    path inside MODEL_DIR. A path outside MODEL_DIR is a 400; a path to nothing is a 404 ``MODEL_NOT_FOUND``."""
    if "\x00" in model_path:  # no file has such a name (and the OS refuses to look one up)
        raise InvalidRequest("model_path must not contain a NUL character",
                             details={"field": "model_path"})
    root = services().settings.model_dir.resolve()
    given = Path(model_path)
    candidates = [given] if given.is_absolute() else [root / given, Path.cwd() / given]
    for candidate in candidates:
        path = candidate.resolve()
        if path == root or root not in path.parents:
            continue
        if not path.exists():
            continue
        return services().models.get(path.relative_to(root).parts[0])
    inside = [c.resolve() for c in candidates if root in c.resolve().parents]
    if not inside:
        raise InvalidRequest("model_path must name a model inside MODEL_DIR",
                             details={"field": "model_path", "model_path": model_path})
    raise ModelNotFound(f"no model at {model_path!r} in MODEL_DIR",
                        details={"available": services().models.names()})


def check_type(model: ModelConfig, model_type: str | None) -> None:
    """A 400 unless ``model_type`` (one of :data:`MODEL_TYPES`) is the model's type."""
    if model_type is None:
        return
    if model_type not in MODEL_TYPES:
        raise InvalidRequest(f"unknown model_type {model_type!r}",
                             details={"field": "model_type", "allowed": sorted(MODEL_TYPES)})
    if MODEL_TYPES[model_type] != model.type:
        raise InvalidRequest(f"model {model.name!r} is a {model.type} model, not {model_type}",
                             details={"field": "model_type", "model_type": model.type})


def model_info(model: ModelConfig) -> dict:
    """The seed's ``model_info``: the model as ``GET /models`` shows it, with its feature count if it has one."""
    info = describe(model)
    if "n_features" in model.options:
        info["input_features"] = int(model.options["n_features"])
    return info


@bp.post("/models/load")
def load_model():
    """Load a model on every worker of its pool and keep it loaded."""
    require_admin()  # loads and unloads change what every tenant's jobs run on
    data = load(SeedModelLoad(), json_body())
    model = resolve_model_path(data["model_path"])
    check_type(model, data.get("model_type"))
    done = apply_command([model.name], "load")
    body = {"success": True, "model_path": str(model.path.resolve()), "model_type": model.type,
            "model_info": model_info(model),
            "message": "Model loaded successfully" if done
            else "Model load requested; the workers are still loading it (GET /models shows loaded)"}
    return jsonify(SeedModelLoadResponse().dump(body)), (200 if done else 202)


@bp.delete("/models")
def unload_models():
    """Unload ``?model=<id>``, or every model some worker has loaded (a later job loads its model again)."""
    require_admin()
    name = request.args.get("model")
    held = loaded_models()
    names = [services().models.get(name).name] if name else sorted(held)
    done = bool(names) and apply_command(names, "unload")  # a model no worker holds now is unpinned all the same
    if not held.intersection(names):
        return jsonify(SeedUnloadResponse().dump({"success": True, "message": "No model was loaded", "models": []}))
    # The seed's message whatever the count (``models`` lists them): clients compare it.
    message = "Model unloaded successfully" if done \
        else "Unload requested; some workers still have the model loaded (GET /models shows loaded)"
    body = SeedUnloadResponse().dump({"success": True, "message": message, "models": names})
    return jsonify(body), (200 if done else 202)


def _default_model() -> str:
    svc = services()
    if svc.settings.default_predict_model:
        return svc.settings.default_predict_model
    names = svc.models.names()
    if len(names) == 1:
        return names[0]
    raise InvalidRequest("name the model to validate: {\"model\": \"<id>\"}", details={"available": names})


@bp.post("/validate")
def validate_model():
    """Load the model afresh in a worker and run a sample through it."""
    require_operator_or_key()
    data = load(SeedValidateRequest(), json_body()) if request.get_data(cache=True).strip() else {}
    model = services().models.get(data.get("model") or _default_model())
    report = run_validation(model)
    results = {k: v for k, v in report.items() if k not in {"id", "type"}}
    if "n_features" in model.options:
        results["input_features"] = int(model.options["n_features"])
    return jsonify(SeedValidateResponse().dump({"success": bool(report.get("valid")), "model_type": model.type,
                                                "results": {"model": model.name, **results},
                                                "timestamp": isoformat(now())}))

"""The tabular demo models: ``iris`` (classifier) and ``diabetes`` (regressor), trained on scikit-learn's bundled
datasets and converted with skl2onnx."""

from __future__ import annotations

import json
from pathlib import Path


def _train(name: str):
    from sklearn.datasets import load_diabetes, load_iris
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "iris":
        data = load_iris()
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        config = {"task": "classification", "labels": [str(t) for t in data.target_names]}
    else:
        data = load_diabetes()
        model = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
        config = {"task": "regression"}
    model.fit(data.data.astype("float32"), data.target)
    config["feature_names"] = [str(f) for f in data.feature_names]
    return model, data, config


BACKGROUND_ROWS = 100


def write_background(path: Path, data) -> None:
    """``background.npy``: a fixed sample of training rows, what feature importance draws replacement values from
    (inferno_jobs/importance.py)."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = data.data[rng.choice(len(data.data), size=min(BACKGROUND_ROWS, len(data.data)), replace=False)]
    np.save(path / "background.npy", rows.astype("float32"))


def build(model_dir: Path, name: str = "iris", force: bool = False) -> Path:
    """Train ``name`` (``iris`` or ``diabetes``) and write ``model_dir/<name>/{model.onnx,config.json,
    background.npy}``. A model built before background rows existed gets them added."""
    from skl2onnx import to_onnx

    path = Path(model_dir) / name
    if (path / "model.onnx").is_file() and (path / "config.json").is_file() and not force:
        if not (path / "background.npy").is_file():
            write_background(path, _train(name)[1])
        return path
    model, data, config = _train(name)
    n_features = data.data.shape[1]
    # zipmap off: probabilities come back as a plain float matrix, one row per sample.
    options = {id(model.steps[-1][1]): {"zipmap": False}} if config["task"] == "classification" else None
    onnx_model = to_onnx(model, data.data[:1].astype("float32"), options=options, target_opset=17)
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.onnx").write_bytes(onnx_model.SerializeToString())
    config = {"type": "predict", "device": "cpu", "max_batch_size": 64, "max_batch_wait_ms": 5,
              "n_features": n_features, "input_name": onnx_model.graph.input[0].name, **config}
    (path / "config.json").write_text(json.dumps(config, indent=2))
    write_background(path, data)
    return path


def reference(name: str):
    """The trained scikit-learn model and its dataset, for checking what the ONNX model answers."""
    model, data, _ = _train(name)
    return model, data

"""Feature importance by permutation (inferno_jobs/importance.py, workers/tabular.py) on small ONNX models built
here, and the checks of POST /feature-importance and POST /jobs with type feature_importance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from inferno_jobs.model import ModelConfig
from workers.tabular import TabularRunner

pytest.importorskip("skl2onnx", reason="skl2onnx builds the test models")


def build_model(root: Path, name: str, estimator, X, y, *, classifier: bool, background: bool = True,
                extra_config: dict | None = None) -> Path:
    from skl2onnx import to_onnx

    estimator.fit(X, y)
    options = {id(estimator): {"zipmap": False}} if classifier else None
    onnx_model = to_onnx(estimator, X[:1].astype(np.float32), options=options, target_opset=17)
    path = root / name
    path.mkdir(parents=True)
    (path / "model.onnx").write_bytes(onnx_model.SerializeToString())
    config = {"type": "predict", "n_features": X.shape[1], "task": "classification" if classifier else "regression",
              **(extra_config or {})}
    (path / "config.json").write_text(json.dumps(config))
    if background:
        np.save(path / "background.npy", X[:100].astype(np.float32))
    return path


def runner_for(path: Path) -> TabularRunner:
    return TabularRunner(ModelConfig.load(path), ["CPUExecutionProvider"], ort.SessionOptions())


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    from sklearn.linear_model import LinearRegression, LogisticRegression

    root = tmp_path_factory.mktemp("fi-models")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 4)).astype(np.float32)
    # feature 2 is pure noise: the regressor's weight on it is ~0
    build_model(root, "noise", LinearRegression(), X, 3 * X[:, 0] + 2 * X[:, 1] - X[:, 3], classifier=False)
    # feature 1 is constant in training: the classifier cannot use it, and the background never moves it
    Xc = X.copy()
    Xc[:, 1] = 0.5
    build_model(root, "constant", LogisticRegression(max_iter=1000), Xc, (Xc[:, 0] + Xc[:, 2] > 0).astype(int),
                classifier=True, extra_config={"feature_names": ["a", "b", "c", "d"], "labels": ["no", "yes"]})
    build_model(root, "means", LinearRegression(), X, 3 * X[:, 0] + 2 * X[:, 1] - X[:, 3], classifier=False,
                background=False, extra_config={"feature_means": [0.0, 0.0, 0.0, 0.0]})
    build_model(root, "bare", LinearRegression(), X, X[:, 0], classifier=False, background=False)
    (root / "encoder").mkdir()
    (root / "encoder" / "config.json").write_text(json.dumps({"type": "embedding"}))
    return root


def explain(runner: TabularRunner, row, **params) -> dict:
    (result,) = runner.run_batch([{"features": [row], "method": "permutation", "n_repeats": 16, **params}])
    assert not isinstance(result, Exception), result
    return result


def test_a_pure_noise_feature_ranks_last_with_no_importance(models):
    result = explain(runner_for(models / "noise"), [1.0, -0.5, 2.0, 0.3], seed=3)
    ranking = list(result["feature_importance"])
    assert ranking[0] == "feature_0" and ranking[-1] == "feature_2"
    assert result["feature_importance"]["feature_2"] < 1e-4
    assert sum(result["feature_importance"].values()) == pytest.approx(1, abs=1e-4)
    assert list(result["feature_importance"].values()) == sorted(result["feature_importance"].values(), reverse=True)
    assert result["baseline_prediction"] == [pytest.approx(3 * 1.0 + 2 * -0.5 - 0.3, abs=1e-4)]
    assert result["method"] == "permutation" and result["background"] == "training_sample"


def test_a_classifier_is_explained_by_its_predicted_class_probability_and_names_features(models):
    result = explain(runner_for(models / "constant"), [1.0, 0.5, 0.2, -1.0], seed=5)
    assert set(result["feature_importance"]) == {"a", "b", "c", "d"}
    assert list(result["feature_importance"])[-1] in {"b", "d"}
    assert result["feature_importance"]["b"] == 0.0  # constant in training: replacing it changes nothing
    assert result["label"] == "yes" and result["output"] == "probability of the predicted class"
    assert 0.5 <= result["baseline_prediction"][0] <= 1


def test_the_same_seed_gives_the_same_importances(models):
    runner = runner_for(models / "constant")
    row = [0.1, 0.5, -0.2, 0.4]
    first, again = explain(runner, row, seed=11), explain(runner, row, seed=11)
    assert first == again
    assert explain(runner, row, seed=12)["raw_importance"] != first["raw_importance"]


def test_feature_means_stand_in_when_a_model_has_no_background_rows(models):
    result = explain(runner_for(models / "means"), [1.0, 1.0, 1.0, 1.0], seed=1)
    assert result["background"] == "feature_means" and result["n_repeats"] == 1
    assert result["raw_importance"]["feature_0"] == pytest.approx(3, abs=1e-4)
    assert result["raw_importance"]["feature_2"] == pytest.approx(0, abs=1e-4)


def test_importance_and_predictions_share_one_micro_batch(models):
    runner = runner_for(models / "noise")
    predict, explained, bad = runner.run_batch([
        {"features": [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]},
        {"features": [[1.0, -0.5, 2.0, 0.3]], "method": "permutation", "n_repeats": 4, "seed": 1},
        {"features": [[1.0, 2.0]], "method": "permutation", "n_repeats": 4, "seed": 1},
    ])
    assert predict["predictions"] == [pytest.approx(3, abs=1e-4), pytest.approx(2, abs=1e-4)]
    assert list(explained["feature_importance"])[-1] == "feature_2"
    assert bad.code == "INVALID_REQUEST"


# -- the API ---------------------------------------------------------------------------------------------------------

@pytest.fixture
def fi_client(make_app, models):
    return make_app(model_dir=models).test_client()


@pytest.mark.parametrize("body, field", [
    ({"model": "encoder", "features": [[1.0, 2.0]]}, "type"),  # not a tabular model
    ({"model": "noise", "features": [[1.0, 2.0, 3.0]]}, "input.features"),  # 3 features for a 4-feature model
    ({"model": "noise", "features": [[1, 2, 3, 4], [1, 2, 3, 4]]}, "features"),  # one row at a time
    ({"model": "noise", "features": [[1, 2, 3, 4]], "n_repeats": 0}, "n_repeats"),
    ({"model": "noise", "features": [[1, 2, 3, "x"]]}, "features.0.3"),
    ({"model": "bare", "features": [[1, 2, 3, 4]]}, "model"),  # no background rows, no feature means
])
def test_post_feature_importance_refuses_what_it_cannot_explain(fi_client, celery_stub, body, field):
    response = fi_client.post("/feature-importance", json=body)
    assert response.status_code == 400, response.json
    assert response.json["error"]["code"] == "INVALID_REQUEST"
    assert response.json["error"]["details"]["field"] == field
    assert celery_stub.sent == []


def test_an_unknown_model_is_404(fi_client):
    response = fi_client.post("/feature-importance", json={"model": "nope", "features": [[1, 2, 3, 4]]})
    assert response.status_code == 404 and response.json["error"]["code"] == "MODEL_NOT_FOUND"


def test_post_jobs_queues_a_feature_importance_job_with_a_seed(fi_client, celery_stub):
    response = fi_client.post("/jobs", json={"type": "feature_importance", "model": "noise",
                                             "input": {"features": [[1, 2, 3, 4]], "n_repeats": 8}})
    assert response.status_code == 202, response.json
    job = response.json
    assert job["type"] == "feature_importance" and job["status"] == "queued"
    assert len(celery_stub.sent) == 1
    stored = fi_client.get(f"/jobs/{job['id']}").json
    assert stored["type"] == "feature_importance"
    listed = fi_client.get("/jobs?type=feature_importance").json["data"]
    assert [j["id"] for j in listed] == [job["id"]]


def test_post_jobs_refuses_a_bad_feature_importance_input(fi_client):
    response = fi_client.post("/jobs", json={"type": "feature_importance", "model": "noise",
                                             "input": {"features": [[1, 2, 3, 4]], "method": "shap"}})
    assert response.status_code == 400
    assert "method" in response.json["error"]["details"]["input"]

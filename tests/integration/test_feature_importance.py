"""Feature importance through the whole system: POST /feature-importance and POST /jobs on a real worker, on the
demo iris model and on a model that ignores one of its features."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from inferno_jobs.config import Settings
from tests.conftest import wait_for
from tests.unit.test_feature_importance import build_model

pytestmark = pytest.mark.integration


@pytest.fixture
def fi_api(tmp_path, model_dir, live_settings, live_redis, start_worker):
    """An API and a worker on a model directory holding iris and ``ignores-x2`` (its feature 2 is noise)."""
    from sklearn.linear_model import LinearRegression

    from api import create_app

    shutil.copytree(model_dir / "iris", tmp_path / "iris")
    X = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
    build_model(tmp_path, "ignores-x2", LinearRegression(), X, 2 * X[:, 0] - X[:, 1] + 0.5 * X[:, 3],
                classifier=False)
    settings = Settings.from_env({}, **{**live_settings.__dict__, "model_dir": tmp_path,
                                        "default_predict_model": "iris"})
    start_worker(settings)
    return create_app(settings, redis_client=live_redis).test_client()


def test_feature_importance_answers_in_the_seed_shape_on_iris(fi_api):
    response = fi_api.post("/feature-importance", json={"features": [[5.1, 3.5, 1.4, 0.2]], "seed": 4})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["success"] is True and body["timestamp"].endswith("Z") and body["model"] == "iris"
    importance = body["feature_importance"]
    assert set(importance) == {"sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"}
    assert list(importance.values()) == sorted(importance.values(), reverse=True)
    assert sum(importance.values()) == pytest.approx(1, abs=1e-4)
    assert len(body["baseline_prediction"]) == 1 and 0.34 < body["baseline_prediction"][0] <= 1
    assert body["metadata"]["label"] == "setosa"
    again = fi_api.post("/feature-importance", json={"model": "iris", "features": [[5.1, 3.5, 1.4, 0.2]], "seed": 4})
    assert again.get_json()["feature_importance"] == importance  # the same seed, the same answer


def test_a_feature_the_model_ignores_ranks_last(fi_api):
    response = fi_api.post("/feature-importance", json={"model": "ignores-x2", "features": [[1.0, -1.0, 3.0, 0.5]]})
    assert response.status_code == 200, response.get_json()
    importance = response.get_json()["feature_importance"]
    assert list(importance) == ["feature_0", "feature_1", "feature_3", "feature_2"]
    assert importance["feature_2"] < 1e-4
    assert response.get_json()["baseline_prediction"][0] == pytest.approx(2 + 1 + 0.25, abs=1e-3)


def test_feature_importance_is_a_job_like_any_other(fi_api):
    created = fi_api.post("/jobs", json={"type": "feature_importance", "model": "ignores-x2", "priority": "low",
                                         "input": {"features": [[0.3, 0.1, -2.0, 1.0]], "n_repeats": 8}})
    assert created.status_code == 202, created.get_json()
    job = wait_for(lambda: (j := fi_api.get(f"/jobs/{created.get_json()['id']}").get_json())["status"]
                   not in ("queued", "running") and j, 60)
    assert job["status"] == "succeeded", job["error"]
    assert job["type"] == "feature_importance" and job["result"]["method"] == "permutation"
    assert list(job["result"]["feature_importance"])[-1] == "feature_2"
    assert job["result"]["n_repeats"] == 8 and isinstance(job["result"]["seed"], int)

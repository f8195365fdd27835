"""Permutation feature importance of one tabular row (``feature_importance`` jobs, ``POST /feature-importance``).

For a row ``x`` the model's output ``f(x)`` is the probability of the predicted class (classifiers) or the predicted
value (regressors). Each feature ``j`` is replaced, ``n_repeats`` times, by values that feature really takes: drawn
from the model's *background* rows (``MODEL_DIR/<name>/background.npy``, a sample of the training data), or, when a
model has none, by the feature means its ``config.json`` lists (``feature_means``; one replacement per feature).
The importance of ``j`` is the mean ``|f(x) - f(x with x_j replaced)|``; the reported importances are normalised to
sum to 1 and sorted from most to least important. A feature the model ignores scores 0.

The baseline and every replaced row go through the model in one engine call (``1 + n_features * n_repeats`` rows).
Draws come from ``numpy``'s generator seeded with ``seed``: the same seed gives the same answer. This module holds
the arithmetic and the checks the API makes before a job is queued; ``workers/tabular.py`` runs the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from inferno_jobs.errors import InvalidRequest
from inferno_jobs.model import ModelConfig

METHOD = "permutation"
BACKGROUND_FILE = "background.npy"
DEFAULT_N_REPEATS = 32
MAX_N_REPEATS = 1000
MAX_ROWS = 100_000  # rows of the one engine call, 1 + n_features * n_repeats: bounds a job's memory and run time
SEED_LIMIT = 2 ** 32  # seeds are 0 .. 2**32 - 1


def background_path(model: ModelConfig):
    """Where the model's background rows are kept."""
    return model.path / model.options.get("background", BACKGROUND_FILE)


def background_kind(model: ModelConfig) -> str | None:
    """``"training_sample"`` (background.npy), ``"feature_means"`` (config.json) or None when the model has neither."""
    if background_path(model).is_file():
        return "training_sample"
    if isinstance(model.options.get("feature_means"), list):
        return "feature_means"
    return None


def feature_names(model: ModelConfig, n_features: int) -> list[str]:
    """The model's ``feature_names`` when its config has one per feature, else ``feature_0``, ``feature_1``..."""
    names = model.options.get("feature_names")
    if isinstance(names, list) and len(names) == n_features and len(set(map(str, names))) == n_features:
        return [str(n) for n in names]
    return [f"feature_{j}" for j in range(n_features)]


def check_request(model: ModelConfig, job_input: dict) -> None:
    """What the API checks before it queues a job: one row, a bounded engine call, background data to draw from.

    Raises :class:`InvalidRequest` (400).
    """
    rows = job_input.get("features") or []
    if len(rows) != 1:
        raise InvalidRequest(f"feature importance explains one row at a time; features has {len(rows)} rows",
                             details={"field": "features"})
    n_features = len(rows[0])
    n_repeats = job_input.get("n_repeats", DEFAULT_N_REPEATS)
    if 1 + n_features * n_repeats > MAX_ROWS:
        raise InvalidRequest(f"n_features x n_repeats must be below {MAX_ROWS}; lower n_repeats to at most "
                             f"{(MAX_ROWS - 1) // n_features}", details={"field": "n_repeats"})
    if background_kind(model) is None:
        raise InvalidRequest(
            f"model {model.name!r} has no background data for feature importance: add {BACKGROUND_FILE} (a sample "
            "of training rows) to its directory or feature_means to its config.json", details={"field": "model"})


def load_background(model: ModelConfig, n_features: int) -> np.ndarray:
    """The background rows, ``(m, n_features)`` float32; raises ``ValueError`` when they do not fit the model."""
    if background_path(model).is_file():
        rows = np.load(background_path(model), allow_pickle=False)
    else:
        rows = np.asarray([model.options.get("feature_means") or []])
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] != n_features or not np.isfinite(rows).all():
        raise ValueError(f"background of model {model.name!r} must be finite rows of {n_features} numbers, "
                         f"got shape {rows.shape}")
    return rows


def new_seed() -> int:
    """A random seed, reported in the result so that the run can be repeated."""
    return int.from_bytes(os.urandom(4), "big")


@dataclass
class Permutation:
    """One row's permutation plan: the rows to run, then :meth:`explain` on the model's outputs for them."""

    row: np.ndarray  # (n_features,)
    rows: np.ndarray  # (1 + n_features * repeats, n_features): the row itself, then `repeats` variants per feature
    repeats: int
    seed: int

    @classmethod
    def plan(cls, row: np.ndarray, background: np.ndarray, n_repeats: int, seed: int | None = None) -> "Permutation":
        """Replace each feature of ``row`` by ``n_repeats`` values drawn from ``background`` (without replacement
        while the background has enough rows). A one-row background (feature means) needs one replacement."""
        seed = new_seed() if seed is None else int(seed)
        rng = np.random.default_rng(seed)
        n_features = row.shape[0]
        m = background.shape[0]
        repeats = n_repeats if m > 1 else 1
        variants = np.tile(row, (n_features * repeats, 1))
        for j in range(n_features):
            drawn = rng.choice(m, size=repeats, replace=repeats > m)
            variants[j * repeats:(j + 1) * repeats, j] = background[drawn, j]
        return cls(row=row, rows=np.vstack([row[None, :], variants]).astype(np.float32), repeats=repeats, seed=seed)

    def explain(self, outputs: np.ndarray, names: list[str]) -> dict:
        """The importances from ``f`` of each planned row, in order: ``feature_importance`` (normalised, most
        important first), ``raw_importance`` (mean absolute change of ``f``, same order) and ``baseline_prediction``.

        When no single feature moves the output, every importance is 0.
        """
        values = np.asarray(outputs, dtype=np.float64).reshape(-1)
        baseline = values[0]
        raw = np.abs(values[1:].reshape(len(names), self.repeats) - baseline).mean(axis=1)
        total = raw.sum()
        share = raw / total if total > 0 else np.zeros_like(raw)
        order = sorted(range(len(names)), key=lambda j: (-share[j], j))
        return {
            "feature_importance": {names[j]: round(float(share[j]), 6) for j in order},
            "raw_importance": {names[j]: float(raw[j]) for j in order},
            "baseline_prediction": [float(baseline)],
        }

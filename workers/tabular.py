"""Runs ONNX tabular models (scikit-learn converted with skl2onnx): ``predict`` and ``feature_importance`` jobs."""

from __future__ import annotations

import numpy as np

from inferno_jobs import importance
from inferno_jobs.errors import InfernoError, InferenceFailed, InvalidRequest
from workers.runner import Runner


class TabularRunner(Runner):
    """Classifiers give ``predictions`` and ``probabilities``; regressors give ``predictions``.

    ``feature_importance`` jobs (their input has a ``method``) run here too: each becomes its row plus its
    permuted variants (inferno_jobs/importance.py). All rows of all jobs in a micro-batch go through one ONNX
    Runtime call and are split back per job.
    """

    model_type = "predict"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.n_features = self.model.options.get("n_features")
        self.classifier = self.model.options.get("task") == "classification"
        self._background: np.ndarray | None = None  # read on the first feature_importance job

    def _rows(self, item: dict) -> np.ndarray:
        rows = np.asarray(item["features"], dtype=np.float32)
        if rows.ndim != 2 or (self.n_features and rows.shape[1] != self.n_features):
            raise InvalidRequest(f"features must be rows of {self.n_features} numbers", details={"field": "features"})
        return rows

    def background(self, n_features: int) -> np.ndarray:
        """The rows feature importance draws replacement values from."""
        if self._background is None:
            if importance.background_kind(self.model) is None:
                raise InvalidRequest(f"model {self.model.name!r} has no background data for feature importance",
                                     details={"field": "model"})
            try:
                self._background = importance.load_background(self.model, n_features)
            except (OSError, ValueError) as exc:
                raise InferenceFailed(f"feature importance needs usable background data: {exc}") from exc
        return self._background

    def _plan(self, item: dict) -> importance.Permutation:
        rows = self._rows(item)
        if len(rows) != 1:
            raise InvalidRequest("feature importance explains one row at a time", details={"field": "features"})
        return importance.Permutation.plan(rows[0], self.background(rows.shape[1]),
                                           int(item.get("n_repeats", importance.DEFAULT_N_REPEATS)), item.get("seed"))

    def run_batch(self, inputs: list[dict]) -> list[dict | InfernoError]:
        parts: list[np.ndarray | importance.Permutation | InfernoError] = []
        for item in inputs:
            try:
                parts.append(self._plan(item) if "method" in item else self._rows(item))
            except (InvalidRequest, InferenceFailed, ValueError, TypeError, KeyError) as exc:
                parts.append(exc if isinstance(exc, InfernoError) else InvalidRequest(f"bad features: {exc}"))
        good = [p.rows if isinstance(p, importance.Permutation) else p
                for p in parts if not isinstance(p, InfernoError)]
        if not good:
            return parts  # type: ignore[return-value]
        outputs = self.session.run(None, {self.input_name: np.concatenate(good)})
        labels = np.asarray(outputs[0]).reshape(-1)
        probabilities = np.asarray(outputs[1]) if self.classifier and len(outputs) > 1 else None
        results: list[dict | InfernoError] = []
        offset = 0
        for part in parts:
            if isinstance(part, InfernoError):
                results.append(part)
                continue
            n = len(part.rows if isinstance(part, importance.Permutation) else part)
            window = slice(offset, offset + n)
            offset += n
            part_probabilities = probabilities[window] if probabilities is not None else None
            if isinstance(part, importance.Permutation):
                results.append(self._importance(part, labels[window], part_probabilities))
                continue
            result = {"predictions": labels[window].tolist()}
            if part_probabilities is not None:
                result["probabilities"] = part_probabilities.tolist()
                if self.model.options.get("labels"):
                    names = self.model.options["labels"]
                    result["labels"] = [names[int(i)] for i in result["predictions"]]
            results.append(result)
        return results

    def _importance(self, plan: importance.Permutation, labels: np.ndarray, probabilities: np.ndarray | None) -> dict:
        """A feature_importance result: a classifier is explained by the probability of the class it predicts
        for the row, a regressor by its value."""
        if probabilities is not None:
            column = int(np.argmax(probabilities[0]))
            values, output = probabilities[:, column], "probability of the predicted class"
        else:
            values, output = labels, "predicted value"
        names = importance.feature_names(self.model, len(plan.row))
        result = {**plan.explain(values, names), "method": importance.METHOD, "output": output,
                  "prediction": labels[0].item(), "n_repeats": plan.repeats, "seed": plan.seed,
                  "background": importance.background_kind(self.model)}
        if probabilities is not None and self.model.options.get("labels"):
            result["label"] = self.model.options["labels"][int(labels[0])]
        return result

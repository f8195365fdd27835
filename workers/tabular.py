"""Runs ONNX tabular models (scikit-learn converted with skl2onnx): ``predict`` jobs."""

from __future__ import annotations

import numpy as np

from inferno_jobs.errors import InfernoError, InvalidRequest
from workers.runner import Runner


class TabularRunner(Runner):
    """Classifiers give ``predictions`` and ``probabilities``; regressors give ``predictions``.

    All rows of all jobs in a micro-batch go through one ONNX Runtime call and are split back per job.
    """

    model_type = "predict"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.n_features = self.model.options.get("n_features")
        self.classifier = self.model.options.get("task") == "classification"

    def _rows(self, item: dict) -> np.ndarray:
        rows = np.asarray(item["features"], dtype=np.float32)
        if rows.ndim != 2 or (self.n_features and rows.shape[1] != self.n_features):
            raise InvalidRequest(f"features must be rows of {self.n_features} numbers", details={"field": "features"})
        return rows

    def run_batch(self, inputs: list[dict]) -> list[dict | InfernoError]:
        parts: list[np.ndarray | InfernoError] = []
        for item in inputs:
            try:
                parts.append(self._rows(item))
            except (InvalidRequest, ValueError, TypeError, KeyError) as exc:
                parts.append(exc if isinstance(exc, InfernoError) else InvalidRequest(f"bad features: {exc}"))
        good = [p for p in parts if isinstance(p, np.ndarray)]
        if not good:
            return parts  # type: ignore[return-value]
        outputs = self.session.run(None, {self.input_name: np.concatenate(good)})
        labels = np.asarray(outputs[0]).reshape(-1)
        probabilities = np.asarray(outputs[1]) if self.classifier and len(outputs) > 1 else None
        results: list[dict | InfernoError] = []
        offset = 0
        for part in parts:
            if not isinstance(part, np.ndarray):
                results.append(part)
                continue
            n = len(part)
            result = {"predictions": labels[offset:offset + n].tolist()}
            if probabilities is not None:
                result["probabilities"] = probabilities[offset:offset + n].tolist()
                if self.model.options.get("labels"):
                    names = self.model.options["labels"]
                    result["labels"] = [names[int(i)] for i in result["predictions"]]
            results.append(result)
            offset += n
        return results

"""The base class for running one loaded model on a micro-batch of job inputs."""

from __future__ import annotations

import onnxruntime as ort
from billiard.exceptions import SoftTimeLimitExceeded

from inferno_jobs.errors import InfernoError, InferenceFailed, ModelNotLoaded
from inferno_jobs.model import ModelConfig

# What ends a whole run instead of failing one input: the task's soft time limit (``timeout_s``), raised into the
# running code by the Celery pool (billiard's class, so runners stay free of Celery). Every catch-all that turns an
# input's surprise into its own error lets these through, so the job ends ``timed_out`` and nothing runs on.
ABORTS: tuple[type[BaseException], ...] = (SoftTimeLimitExceeded,)


class Runner:
    """Runs one model. Subclasses implement :meth:`run_batch` for their model type.

    ``run_batch`` takes the ``input`` dicts of several jobs and returns one entry per job, in order: a result
    dict, or an :class:`InfernoError` for that job alone, so one bad input never fails its neighbours.
    """

    model_type: str = ""

    def __init__(self, model: ModelConfig, providers: list[str], session_options: ort.SessionOptions):
        self.model = model
        try:
            self.session = ort.InferenceSession(str(model.onnx_path), sess_options=session_options,
                                                providers=providers)
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            raise ModelNotLoaded(f"model {model.name!r} failed to load: {exc}") from exc

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses."""
        return self.session.get_providers()

    def run_batch(self, inputs: list[dict]) -> list[dict | InfernoError]:
        """Run several jobs' inputs; one result or error per input, in order."""
        raise NotImplementedError

    def run_each(self, inputs: list[dict]) -> list[dict | InfernoError]:
        """Run inputs one by one: how a batch that failed as a whole finds the input that broke it."""
        out: list[dict | InfernoError] = []
        for item in inputs:
            try:
                out.extend(self.run_batch([item]))
            except InfernoError as exc:
                out.append(exc)
            except ABORTS:
                raise
            except Exception as exc:  # a failing input fails its own job only
                out.append(InferenceFailed(f"inference failed: {exc}"))
        return out

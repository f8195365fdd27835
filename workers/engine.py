"""The ONNX Runtime engine of one worker process: builds runners lazily, caches them, evicts by memory budget.

An engine is created after fork (in ``worker_process_init`` or on first use), never at import time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import onnxruntime as ort

from inferno_jobs.config import Settings
from inferno_jobs.engine_config import EngineConfig
from inferno_jobs.errors import InfernoError, ModelNotLoaded
from inferno_jobs.model import ModelConfig, ModelRepository
from workers.runner import ABORTS, Runner

log = logging.getLogger(__name__)

# How often a loaded model's files are compared with the ones it was loaded from (one stat of each file).
FILES_CHECK_INTERVAL_S = 1.0


def runner_classes() -> dict[str, type[Runner]]:
    """The runner for each model type (imported on first use, in the worker process that loads a model)."""
    from workers.embedding import EmbeddingRunner
    from workers.generation import GenerationRunner
    from workers.tabular import TabularRunner

    return {"predict": TabularRunner, "embedding": EmbeddingRunner, "completion": GenerationRunner}


def providers_for(pool: str) -> list[str]:
    """CUDA first on the gpu pool when this onnxruntime build has it; CPU always last."""
    available = ort.get_available_providers()
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if pool == "gpu" else ["CPUExecutionProvider"]
    return [p for p in wanted if p in available] or ["CPUExecutionProvider"]


@dataclass
class Loaded:
    """A model this process holds: its runner, its size on disk, and the version of the files it was built from."""

    runner: Runner
    size: int
    version: str
    checked_at: float  # time.monotonic() of the last comparison with the files


class Engine:
    """Loaded models of one worker process, least recently used evicted past ``memory_budget_bytes``.

    A loaded model whose files change (a new ``model.onnx``, tokenizer or ``config.json``) is loaded again at its
    next use, so no process serves files its model directory no longer holds. ``load_errors`` keeps each model's
    last load failure (cleared by a successful load or an unload) for the workers' reports.

    ``engine_config()`` returns the live engine settings: their ``num_threads`` sizes the sessions built after a
    change (``POST /config``); loaded sessions keep theirs until they are rebuilt (``POST /restart``, or an unload
    and load).
    """

    def __init__(self, settings: Settings, pool: str = "cpu", processes: int = 1,
                 memory_budget_bytes: int = 4 * 1024 ** 3, engine_config: Callable[[], EngineConfig] | None = None):
        self.settings = settings
        self.repository = ModelRepository(settings.model_dir)
        self.pool = pool
        self.providers = providers_for(pool)
        self.memory_budget_bytes = memory_budget_bytes
        self.engine_config = engine_config
        self.default_threads = max(1, (os.cpu_count() or 1) // max(1, processes))
        self._runners: OrderedDict[str, Loaded] = OrderedDict()
        self.load_errors: dict[str, dict] = {}
        # The model watcher thread loads and unloads while tasks run.
        self._lock = threading.RLock()

    @property
    def threads(self) -> int:
        """Intra-op threads of a session built now: the live ``num_threads``, else ``INFERNO_ONNX_THREADS``; 0
        means the cores divided by the worker processes, so processes x threads does not exceed the cores."""
        wanted = self.engine_config().num_threads if self.engine_config is not None else self.settings.onnx_threads
        return wanted or self.default_threads

    def session_options(self) -> ort.SessionOptions:
        """Options of a new session, with :attr:`threads` intra-op threads."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        return options

    def runner(self, name: str, recheck: bool = False) -> Runner:
        """The runner of model ``name``, loading it (and evicting others) if needed.

        Its files are compared with the loaded version at most once every ``FILES_CHECK_INTERVAL_S`` (always with
        ``recheck``). When they changed the model is loaded again; if the new files do not load, the old session is
        dropped too and the error raised: a job fails with it rather than run on a model that is gone.
        """
        with self._lock:
            held = self._runners.get(name)
            if held is not None:
                self._runners.move_to_end(name)
                if not recheck and time.monotonic() - held.checked_at < FILES_CHECK_INTERVAL_S:
                    return held.runner
        try:
            model = self.repository.get(name)
        except InfernoError:  # the directory or its config.json is gone or broken
            self.unload(name)
            raise
        if held is not None:
            version = model.version
            if version == held.version:
                held.checked_at = time.monotonic()
                return held.runner
            log.info("model %s changed on disk: loading it again", name)
            self.unload(name)
        return self.load(model)

    def load(self, model: ModelConfig) -> Runner:
        """Load ``model`` now; raises :class:`ModelNotLoaded` with the reason when it cannot (and keeps that
        reason in ``load_errors``)."""
        try:
            runner = self._build(model)
        except InfernoError as exc:
            self.load_errors[model.name] = {**exc.to_dict(), "at": time.time()}
            raise
        self.load_errors.pop(model.name, None)
        return runner

    def _build(self, model: ModelConfig) -> Runner:
        classes = runner_classes()
        if model.type not in classes:
            raise ModelNotLoaded(f"model {model.name!r} has unknown type {model.type!r}")
        if not model.onnx_path.is_file():
            raise ModelNotLoaded(f"model {model.name!r} has no file {model.onnx_path.name}")
        version = model.version  # before reading the files: a change while loading is seen at the next check
        try:
            runner = classes[model.type](model, self.providers, self.session_options())
        except (InfernoError, *ABORTS):
            raise
        except Exception as exc:  # onnxruntime and tokenizers raise their own types for a file they cannot read
            raise ModelNotLoaded(f"model {model.name!r} failed to load: {type(exc).__name__}: {str(exc)[:300]}") \
                from exc
        with self._lock:
            self._runners[model.name] = Loaded(runner, model.size_bytes, version, time.monotonic())
            while len(self._runners) > 1 and sum(h.size for h in self._runners.values()) > self.memory_budget_bytes:
                self._runners.popitem(last=False)
        return runner

    def unload(self, name: str) -> bool:
        """Drop model ``name``; True if it was loaded."""
        self.load_errors.pop(name, None)
        with self._lock:
            return self._runners.pop(name, None) is not None

    def loaded(self) -> list[str]:
        """Names of the models loaded in this process."""
        with self._lock:
            return list(self._runners)

    def stream(self, name: str, item: dict, on_token, should_stop) -> dict:
        """Run one streaming job input: a generation model calls ``on_token(piece, index)`` per piece and polls
        ``should_stop()``; other models just run it. Returns the result; raises :class:`InfernoError`."""
        runner = self.runner(name)
        generate = getattr(runner, "generate", None)
        if generate is None:
            outcome = runner.run_batch([item])[0]
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        return generate(item, on_token=on_token, should_stop=should_stop)

    def run(self, name: str, inputs: list[dict]) -> list[dict | InfernoError]:
        """Run one micro-batch of job inputs on model ``name``: one result or error per input.

        If the batch call itself fails, the inputs are run one by one so only the bad one fails.
        """
        runner = self.runner(name)
        try:
            return runner.run_batch(inputs)
        except ABORTS:
            raise  # the run's time is up: no second try input by input
        except Exception:
            return runner.run_each(inputs)

"""Fixtures for the synchronous surfaces' unit tests: a model directory of configs only, and a Celery stand-in that
runs each job as soon as it is stored through the real BatchRunner with a fake engine (no ONNX, no processes)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from inferno_jobs import resultcache
from inferno_jobs.errors import ContextLengthExceeded
from inferno_jobs.model import ModelRepository
from inferno_jobs.store import JobStore
from tests.conftest import RecordingCelery
from workers.batching import BatchRunner
from workers.celery_app import RUN_JOB, run_job_options

CONFIGS = {
    "tiny-gpt": {"type": "completion", "context_length": 256, "max_batch_size": 16},
    "minilm": {"type": "embedding", "dim": 4, "max_batch_size": 64},
    "iris": {"type": "predict", "task": "classification", "n_features": 4, "labels": ["setosa", "versicolor",
                                                                                      "virginica"]},
    "diabetes": {"type": "predict", "task": "regression", "n_features": 10},
}
TOKENS = ["Once", " upon", " a", " time"]
TOO_LONG = "a prompt the fake model finds too long"
ALTERNATIVES = [" the", " and", "!", " é", " of"]  # a fake model's runners-up, most likely first


def fake_entry(i: int, token: str, top: int) -> dict:
    """The log probability entry of token ``i`` as the generation runner writes it: the token at -0.1 * (i + 1),
    its ``top`` alternatives below it."""
    logprob = -0.1 * (i + 1)
    top_logprobs = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
    top_logprobs += [{"token": alt, "logprob": logprob - j - 1, "bytes": list(alt.encode())}
                     for j, alt in enumerate(ALTERNATIVES)]
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": top_logprobs[:top]}


def fake_run(model: str, inputs: list[dict]) -> list:
    out = []
    for item in inputs:
        if "features" in item:
            n = len(item["features"])
            result = {"predictions": [0] * n} if model == "iris" else {"predictions": [151.5] * n}
            if model == "iris":
                result["probabilities"] = [[0.9, 0.05, 0.05]] * n
                result["labels"] = ["setosa"] * n
            out.append(result)
        elif "input" in item:
            texts = [item["input"]] if isinstance(item["input"], str) else item["input"]
            out.append({"embeddings": [[0.5, 0.5, 0.5, 0.5]] * len(texts), "dim": 4,
                        "usage": {"prompt_tokens": 3 * len(texts), "total_tokens": 3 * len(texts)}})
        elif (item.get("n") or 1) > 1:
            out.append(fake_choices(item))
        else:
            out.append(fake_generate(item))
    return out


def fake_choices(item: dict) -> dict:
    """``n`` choices, as the generation runner answers them; choice ``j`` of prompt ``p`` reads ``p/j``."""
    one = fake_generate(item)
    choices = []
    for j in range(item["n"]):
        choice = {"index": j, "finish_reason": one["finish_reason"]}
        if "message" in one:
            choice["message"] = {**one["message"], "content": f"chat/{j}"}
        else:
            choice["text"] = f"{item['prompt']}/{j}"
        if item.get("logprobs"):
            text = choice["text"] if "text" in choice else choice["message"]["content"]
            choice["logprobs"] = [fake_entry(i, c, item.get("top_logprobs") or 0) for i, c in enumerate(text)]
        choices.append(choice)
    usage = {"prompt_tokens": 2, "completion_tokens": len(TOKENS) * item["n"]}
    return {"choices": choices, "usage": {**usage, "total_tokens": sum(usage.values())}}


def fake_generate(item: dict, on_token=None, should_stop=None) -> dict:
    """``TOKENS``, one piece per token (with ``logprobs``, each piece with its token's entry, as the runner
    calls ``on_token``)."""
    text, finish, entries = "", "stop", []
    for i, piece in enumerate(TOKENS):
        if should_stop is not None and should_stop():
            finish = "canceled"
            break
        if item.get("logprobs"):
            entries.append(fake_entry(i, piece, item.get("top_logprobs") or 0))
            if on_token:
                on_token(piece, i, logprobs=entries[-1:])
        elif on_token:
            on_token(piece, i)
        text += piece
    usage = {"prompt_tokens": 2, "completion_tokens": len(TOKENS), "total_tokens": 2 + len(TOKENS)}
    if "messages" in item:
        result = {"message": {"role": "assistant", "content": text}, "finish_reason": finish, "usage": usage}
    else:
        result = {"text": text, "finish_reason": finish, "usage": usage}
    if item.get("logprobs"):
        result["logprobs"] = entries
    return result


def fake_stream(model: str, item: dict, on_token, should_stop) -> dict:
    if item.get("prompt") == TOO_LONG:
        raise ContextLengthExceeded("the prompt has 300 tokens; the context holds 256", details={"context_length": 256})
    return fake_generate(item, on_token, should_stop)


class InlineCelery(RecordingCelery):
    """Runs every job the moment it is stored with its message, one at a time on a thread of its own, as one
    worker process would (``run = False`` leaves them queued, as with no worker)."""

    def __init__(self, store: JobStore, models: ModelRepository):
        super().__init__(store.redis)
        self.store, self.models, self.run = store, models, True
        self._one_at_a_time = threading.Lock()  # as one worker process runs its tasks

    def send_task(self, name, args=None, kwargs=None, **options):
        super().send_task(name, args, kwargs, **options)
        if name == RUN_JOB and self.run:
            self._run(args[0])

    def message_commands(self, name, **options):
        commands = super().message_commands(name, **options)
        if name == RUN_JOB and self.run:
            # A new job is stored with its message, after this returns: run it once it is there, as a worker would.
            threading.Thread(target=self._run_when_stored, args=(options["args"][0],), daemon=True).start()
        return commands

    def _run_when_stored(self, job_id: str) -> None:
        deadline = time.monotonic() + 5
        while not self.store.redis.exists(self.store.keys.job(job_id)) and time.monotonic() < deadline:
            time.sleep(0.001)
        self._run(job_id)

    def _run(self, job_id: str) -> None:
        with self._one_at_a_time:
            BatchRunner(self.store, fake_run, model_config=self.models.get,
                        engine_stream=fake_stream).run(job_id)
            # As workers.tasks.run_job: the jobs that shared this run (identical requests in flight) end with it.
            resultcache.settle(self.store, lambda job: self.send_task(RUN_JOB, **run_job_options(job)))


@pytest.fixture
def compat_models(tmp_path):
    for name, config in CONFIGS.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"device": "cpu", **config}))
    return tmp_path


@pytest.fixture
def inline(fake_redis, settings, compat_models):
    from inferno_jobs.config import Settings

    merged = Settings.from_env({}, **{**settings.__dict__, "model_dir": compat_models})
    return InlineCelery(JobStore(fake_redis, merged), ModelRepository(compat_models))


@pytest.fixture
def app_of(fake_redis, settings, compat_models, inline):
    """Build an app on fakeredis with the inline worker; keyword arguments override settings."""
    from api import create_app
    from inferno_jobs.config import Settings

    def build(**overrides):
        merged = Settings.from_env({}, **{**settings.__dict__, "model_dir": compat_models, **overrides})
        return create_app(merged, redis_client=fake_redis, celery=inline)
    return build


def sse_events(response) -> list:
    """The ``data:`` payloads of an SSE body (JSON decoded, ``[DONE]`` kept as a string)."""
    out = []
    for block in response.get_data(as_text=True).split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                payload = line[6:]
                out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out

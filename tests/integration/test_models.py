"""The engine through the whole system: text jobs on real demo models, and model load / unload / validate
commands that reach every worker process."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def run(api, body, timeout_s=120):
    r = api.post("/jobs", json=body)
    assert r.status_code == 202, r.get_json()
    job_id = r.get_json()["id"]
    return wait_for(lambda: (j := api.get(f"/jobs/{job_id}").get_json())["status"] not in ("queued", "running")
                    and j, timeout_s)


def test_embedding_jobs_rank_paraphrases_first(api, start_worker, minilm_dir):
    start_worker()
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell today."]
    jobs = [api.post("/jobs", json={"type": "embedding", "model": "minilm", "input": {"input": t}}).get_json()
            for t in texts]
    done = [wait_for(lambda j=j: (x := api.get(f"/jobs/{j['id']}").get_json())["status"] == "succeeded" and x, 120)
            for j in jobs]
    vectors = [np.asarray(d["result"]["embeddings"][0]) for d in done]
    assert done[0]["result"]["dim"] == 384 and done[0]["result"]["usage"]["prompt_tokens"] > 0
    assert np.allclose([np.linalg.norm(v) for v in vectors], 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


def test_completion_and_chat_jobs_are_deterministic_under_a_seed(api, start_worker, tinygpt_dir):
    start_worker()
    body = {"type": "completion", "model": "tiny-gpt",
            "input": {"prompt": "The fox", "max_tokens": 12, "temperature": 0.8, "seed": 7}}
    first, second = run(api, body), run(api, body)
    assert first["status"] == "succeeded", first["error"]
    assert first["result"]["text"] == second["result"]["text"] and first["result"]["text"]
    assert first["result"]["usage"]["completion_tokens"] <= 12
    chat = run(api, {"type": "chat", "model": "tiny-gpt",
                     "input": {"messages": [{"role": "user", "content": "Tell me a fable."}], "max_tokens": 8}})
    assert chat["status"] == "succeeded" and chat["result"]["message"]["role"] == "assistant"
    too_long = run(api, {"type": "completion", "model": "tiny-gpt", "input": {"prompt": "word " * 2000}})
    assert too_long["status"] == "failed" and too_long["error"]["code"] == "CONTEXT_LENGTH_EXCEEDED"


def test_load_unload_validate_through_the_api(api, start_worker, model_dir):
    start_worker()
    loaded = api.post("/models/diabetes/load")
    assert loaded.status_code == 200 and loaded.get_json()["loaded"] is True
    listed = {m["id"]: m for m in api.get("/models").get_json()["models"]}
    assert listed["diabetes"]["loaded"] is True
    unloaded = api.post("/models/diabetes/unload")
    assert unloaded.status_code == 200 and unloaded.get_json()["loaded"] is False
    report = api.post("/models/iris/validate").get_json()
    assert report["valid"] is True and report["providers"] == ["CPUExecutionProvider"]
    assert report["output_keys"] == ["labels", "predictions", "probabilities"]
    assert api.post("/models/nope/load").get_json()["error"]["code"] == "MODEL_NOT_FOUND"


def test_a_broken_model_gives_a_clear_error_never_a_hung_job(api, start_worker, model_dir):
    broken = model_dir / "broken-it"
    broken.mkdir(exist_ok=True)
    (broken / "config.json").write_text('{"type": "predict", "n_features": 4}')
    (broken / "model.onnx").write_bytes(b"definitely not onnx")
    start_worker()
    report = api.post("/models/broken-it/validate").get_json()
    assert report["valid"] is False and report["error"]["code"] == "MODEL_NOT_LOADED"
    job = run(api, {"type": "predict", "model": "broken-it", "input": {"features": [[1, 2, 3, 4]]}}, 30)
    assert job["status"] == "failed" and job["error"]["code"] == "MODEL_NOT_LOADED"


def test_a_load_after_the_file_changed_loads_it_again_and_a_broken_one_answers_503_with_the_reason(
        api, start_worker, model_dir):
    import shutil

    swap = model_dir / "swap-it"
    shutil.rmtree(swap, ignore_errors=True)
    shutil.copytree(model_dir / "iris", swap)
    row = {"type": "predict", "model": "swap-it", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}}
    try:
        start_worker()
        assert api.post("/models/swap-it/load").status_code == 200
        (swap / "model.onnx").write_bytes(b"not the model any more")
        r = api.post("/models/swap-it/load")
        assert r.status_code == 503, r.get_json()
        error = r.get_json()["error"]
        assert error["code"] == "MODEL_NOT_LOADED" and "failed to load in worker" in error["message"]
        assert error["details"]["worker"] and "failed to load" in error["details"]["error"]
        # the old session is gone everywhere: a job fails with the reason, it does not run on the old file
        assert wait_for(lambda: not {m["id"]: m for m in api.get("/models").get_json()["models"]}["swap-it"]
                        ["loaded"], 15)
        job = run(api, row, 30)
        assert job["status"] == "failed" and job["error"]["code"] == "MODEL_NOT_LOADED"
        shutil.copy(model_dir / "iris" / "model.onnx", swap / "model.onnx")
        api.post("/models/swap-it/circuit/reset")  # the failures above may have opened its circuit breaker
        assert api.post("/models/swap-it/load").status_code == 200
        assert run(api, row)["result"]["labels"] == ["setosa"]
    finally:
        shutil.rmtree(swap, ignore_errors=True)

"""Batches end to end: API -> Redis -> chunk tasks on a real Celery worker -> ONNX Runtime -> results.

A private redis-server, real `celery worker` processes, real demo models; the official ``openai`` client and the
CLI talk to a real HTTP server (werkzeug in a thread).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from inferno_jobs.apikey import KeyRing
from inferno_jobs.demo.tabular import reference
from inferno_jobs.vectors import from_base64
from tests.integration.live_server import LiveServer
from tests.conftest import ROOT, wait_for
from tests.slow_model import build_slow_model

pytestmark = pytest.mark.integration


def upload(api, data: bytes, filename="rows.jsonl", **fields):
    r = api.post("/batches", data={"file": (io.BytesIO(data), filename), **fields}, content_type="multipart/form-data")
    assert r.status_code == 202, r.get_json()
    return r.get_json()


def wait_batch(api, batch_id, timeout_s=60):
    def ended():
        batch = api.get(f"/batches/{batch_id}").get_json()
        return batch if batch["status"] in ("completed", "failed", "canceled") else None
    return wait_for(ended, timeout_s, 0.1)


def results(api, batch_id, path="results"):
    return [json.loads(line) for line in api.get(f"/batches/{batch_id}/{path}").get_data(as_text=True).splitlines()]


@pytest.fixture(scope="module")
def slow_batch_model(model_dir):
    return build_slow_model(model_dir, name="slow-batch", iterations=60)


def test_results_come_back_in_input_order_and_retry_reruns_only_the_failed_lines(api, start_worker, model_dir):
    iris_model, iris = reference("iris")
    flaky = model_dir / "iris-flaky"
    if not flaky.exists():
        flaky.mkdir()
        (flaky / "config.json").write_text((model_dir / "iris" / "config.json").read_text())
    rows = iris.data[:150].tolist()
    lines = [json.dumps({"custom_id": f"flower-{i}", "features": row}) for i, row in enumerate(rows)]
    lines[10] = '{"custom_id": "broken", "features": ['  # fails validation, alone
    good = upload(api, ("\n".join(lines) + "\n").encode(), model="iris", priority="low")
    assert good["status"] == "queued" and good["request_counts"] == {"total": 150, "completed": 0, "failed": 1}
    # iris-flaky has no model.onnx yet: every chunk fails in the worker, as a model that cannot load would
    flaky_batch = upload(api, ("\n".join(lines) + "\n").encode(), model="iris-flaky")
    start_worker()
    done = wait_batch(api, good["id"])
    assert done["status"] == "completed" and done["request_counts"] == {"total": 150, "completed": 149, "failed": 1}
    out = results(api, good["id"])
    assert [l["line"] for l in out] == list(range(1, 151))
    expected = iris_model.predict(np.asarray(rows, dtype=np.float32)).tolist()
    for i, line in enumerate(out):
        if i == 10:
            assert line["status"] == "failed" and line["custom_id"] == "line-11"
            continue
        assert line["custom_id"] == f"flower-{i}" and line["status"] == "succeeded"
        assert line["result"]["predictions"] == [expected[i]]
    assert [e["line"] for e in results(api, good["id"], "errors")] == [11]

    failed = wait_batch(api, flaky_batch["id"])
    assert failed["status"] == "failed" and failed["request_counts"]["failed"] == 150
    assert results(api, failed["id"])[0]["error"]["code"] == "MODEL_NOT_LOADED"
    (flaky / "model.onnx").write_bytes((model_dir / "iris" / "model.onnx").read_bytes())  # the cause is fixed
    r = api.post(f"/batches/{failed['id']}/retry")
    assert r.status_code == 202, r.get_json()
    child = r.get_json()
    assert child["retry_of"] == failed["id"] and child["request_counts"]["total"] == 149  # not the invalid line
    child = wait_batch(api, child["id"])
    assert child["status"] == "completed" and child["request_counts"] == {"total": 149, "completed": 149, "failed": 0}
    child_out = results(api, child["id"])
    assert [l["custom_id"] for l in child_out] == [f"flower-{i}" for i in range(150) if i != 10]
    assert [l["line"] for l in child_out] == [i + 1 for i in range(150) if i != 10]  # the original line numbers
    assert child_out[0]["result"]["predictions"] == [expected[0]]


def test_cancel_stops_unstarted_chunks_and_keeps_finished_results(api, start_worker, slow_batch_model):
    data = "".join(json.dumps({"custom_id": f"s{i}", "features": [i, 1, 1, 1]}) + "\n" for i in range(8)).encode()
    batch = upload(api, data, model="slow-batch")  # max_batch_size 1: eight chunks, about half a second each
    start_worker(concurrency=1)
    wait_for(lambda: api.get(f"/batches/{batch['id']}").get_json()["request_counts"]["completed"] >= 1, 30, 0.05)
    canceled = api.post(f"/batches/{batch['id']}/cancel").get_json()
    assert canceled["status"] == "canceled"
    # the chunk running at that moment may still finish; nothing after it starts
    wait_for(lambda: api.get(f"/batches/{batch['id']}").get_json()["request_counts"]["completed"]
             == sum(l["status"] == "succeeded" for l in results(api, batch["id"])), 10)
    import time
    time.sleep(1.5)
    final = api.get(f"/batches/{batch['id']}").get_json()
    out = results(api, batch["id"])
    assert final["status"] == "canceled"
    succeeded = [l for l in out if l["status"] == "succeeded"]
    assert 1 <= len(succeeded) <= 3 and final["request_counts"]["completed"] == len(succeeded)
    assert succeeded[0] == {"custom_id": "s0", "line": 1, "status": "succeeded", "result": {"predictions": [3.0]}}
    assert [l["status"] for l in out[len(succeeded):]] == ["canceled"] * (8 - len(succeeded))
    assert api.post(f"/batches/{batch['id']}/cancel").status_code == 409


def test_the_openai_client_and_the_cli_against_a_real_server(live_settings, live_redis, start_worker, minilm_dir,
                                                             tmp_path):
    openai = pytest.importorskip("openai", reason="the openai client is in the dev extra")
    from api import create_app

    settings = dataclasses.replace(live_settings, auth="required")
    key = KeyRing(live_redis, settings).create("sdk")[0]
    server = LiveServer(create_app(settings, redis_client=live_redis))
    try:
        start_worker()
        texts = [f"sentence number {i} about {'cats' if i % 2 else 'the stock market'}" for i in range(40)]
        lines = [{"custom_id": f"emb-{i}", "method": "POST", "url": "/v1/embeddings",
                  "body": {"model": "minilm", "input": text}} for i, text in enumerate(texts)]
        lines.append({"custom_id": "too-long", "method": "POST", "url": "/v1/embeddings",
                      "body": {"model": "minilm", "input": "x" * 9000}})
        lines.append({"custom_id": "emb-b64", "method": "POST", "url": "/v1/embeddings",
                      "body": {"model": "minilm", "input": texts[0], "encoding_format": "base64"}})
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        file = client.files.create(file=("requests.jsonl", ("\n".join(json.dumps(l) for l in lines)).encode()),
                                   purpose="batch")
        assert file.id.startswith("file_") and file.purpose == "batch"
        assert [f.id for f in client.files.list()] == [file.id]
        assert [f.id for f in client.files.list(purpose="fine-tune")] == []
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
        assert batch.status in ("validating", "in_progress", "completed")
        batch = wait_for(lambda: (b := client.batches.retrieve(batch.id)).status in ("completed", "failed") and b, 60)
        assert batch.status == "completed"
        assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (42, 41, 1)
        output = [json.loads(l) for l in client.files.content(batch.output_file_id).text.splitlines()]
        assert [o["custom_id"] for o in output] == [f"emb-{i}" for i in range(40)] + ["emb-b64"]
        encoded = output[-1]["response"]["body"]["data"][0]["embedding"]  # base64 of the same float32 vector
        np.testing.assert_array_equal(from_base64(encoded), np.asarray(output[0]["response"]["body"]["data"][0]
                                                                       ["embedding"], dtype=np.float32))
        # the batch's usage is the sum of its lines' usage (the line that failed counts nothing)
        line_tokens = sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in output)
        assert line_tokens > 40 and batch.usage.input_tokens == line_tokens == batch.usage.total_tokens
        assert batch.usage.output_tokens == 0 and batch.usage.input_tokens_details.cached_tokens == 0
        output = output[:-1]
        body = output[0]["response"]["body"]
        assert output[0]["response"]["status_code"] == 200 and body["object"] == "list" and body["model"] == "minilm"
        vector = np.asarray(body["data"][0]["embedding"])
        assert vector.shape == (384,) and abs(np.linalg.norm(vector) - 1) < 1e-4
        errors = [json.loads(l) for l in client.files.content(batch.error_file_id).text.splitlines()]
        assert errors[0]["custom_id"] == "too-long" and errors[0]["response"]["status_code"] == 400
        assert errors[0]["response"]["body"]["error"]["type"] == "invalid_request_error"
        assert batch.id in [b.id for b in client.batches.list(limit=5).data]
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch_01doesnotexist")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="ij_wrong", max_retries=0).batches.list()
        canceled = client.batches.cancel(client.batches.create(
            input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h").id)
        assert canceled.status in ("cancelling", "cancelled")  # cancelling while a chunk taken at once runs on
        deadline = time.monotonic() + 60
        while canceled.status == "cancelling" and time.monotonic() < deadline:
            time.sleep(0.1)
            canceled = client.batches.retrieve(canceled.id)
        assert canceled.status == "cancelled" and canceled.cancelled_at >= canceled.cancelling_at

        # the CLI: submit a .txt file, follow it, write the results file
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("\n".join(texts[:30]) + "\n")
        out = tmp_path / "results.jsonl"
        env = {**os.environ, **settings.env(), "INFERNO_API_URL": server.url, "INFERNO_API_KEY": key,
               "PYTHONPATH": str(ROOT)}
        run = subprocess.run([sys.executable, "-m", "inferno_jobs.cli", "batch", "submit", str(prompts), "--model",
                              "minilm", "--type", "embedding", "--priority", "low", "--wait", "--output", str(out)],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        final = json.loads(run.stdout)
        assert final["status"] == "completed" and final["request_counts"]["completed"] == 30
        assert "30/30 done, 0 failed" in run.stderr and "lines/s" in run.stderr
        written = [json.loads(l) for l in out.read_text().splitlines()]
        assert [w["line"] for w in written] == list(range(1, 31))
        assert all(w["status"] == "succeeded" and w["result"]["dim"] == 384 for w in written)
        np.testing.assert_allclose(written[0]["result"]["embeddings"][0], body["data"][0]["embedding"], atol=1e-5)
    finally:
        server.close()


def test_an_embedding_file_runs_near_the_raw_onnx_runtime_batch_rate(api, start_worker, minilm_dir, live_settings):
    """Per-line overhead stays small: chunks of 64 lines, one message and one engine call each."""
    import time

    from workers.engine import Engine

    words = "the quick brown fox jumps over a lazy dog while seven cats watch from an old red barn".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=12)) for _ in range(1000)]
    engine = Engine(dataclasses.replace(live_settings, onnx_threads=1))
    engine.run("minilm", [{"input": t} for t in texts[:64]])  # load and warm up
    start = time.perf_counter()
    for i in range(0, len(texts), 64):
        engine.run("minilm", [{"input": t} for t in texts[i:i + 64]])
    raw_rate = len(texts) / (time.perf_counter() - start)  # one process, one thread, batches of 64

    start_worker(concurrency=1)  # like for like: one process of one thread
    data = "".join(json.dumps({"custom_id": str(i), "input": t}) + "\n" for i, t in enumerate(texts)).encode()
    start = time.perf_counter()
    batch = upload(api, data, model="minilm")
    done = wait_batch(api, batch["id"], 120)
    rate = len(texts) / (time.perf_counter() - start)
    assert done["request_counts"] == {"total": 1000, "completed": 1000, "failed": 0}
    print(f"raw ONNX Runtime batch-64 rate {raw_rate:.0f}/s (1 thread); batch end to end {rate:.0f}/s")
    # The end-to-end time includes the upload, validation and polling; on a loaded CI box both rates move.
    assert rate > 0.5 * raw_rate, (rate, raw_rate)

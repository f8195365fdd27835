"""Batch file: a 10,000-line embedding JSONL file through ``POST /batches`` (chunks of the model's max batch,
one ONNX Runtime call each) beside a raw ONNX Runtime batch-64 loop over the same texts, in one run."""

from __future__ import annotations

import json
import time

import requests

from bench.embeddings import _raw, sentences
from bench.report import Row


def run(ctx) -> list[Row]:
    from workers.engine import Engine

    stack = ctx.stack
    if not (stack.model_dir / "minilm" / "model.onnx").is_file():
        return [Row("batchfile", "minilm not built: skipped", 0, "")]
    total = 2000 if ctx.quick else 10_000
    texts = sentences(total)
    # The baseline: one process with every core over the same texts, the most ONNX Runtime does here. It is
    # measured before and after the system run, with the stack idle, and the better of the two is kept.
    raw = Engine(stack.settings, pool="cpu", processes=1).runner("minilm")
    stack.start_api()
    stack.start_worker()
    base = f"http://127.0.0.1:{stack.api_port}"
    # Every pool process loads minilm now, as a serving deployment has it loaded: the raw baseline's session is
    # warm too, so neither side counts building a session.
    requests.post(f"{base}/models/minilm/load", timeout=60).raise_for_status()
    stack.wait_idle()
    raw_before = _raw(raw, texts, 64)
    stack.reset()
    body = "".join(json.dumps({"custom_id": f"r{i}", "input": t}) + "\n" for i, t in enumerate(texts)).encode()
    started = time.perf_counter()
    r = requests.post(f"{base}/batches", files={"file": ("prompts.jsonl", body)},
                      data={"model": "minilm", "type": "embedding"}, timeout=300)
    r.raise_for_status()
    batch_id = r.json()["id"]
    while True:
        batch = requests.get(f"{base}/batches/{batch_id}", timeout=30).json()
        if batch["status"] in ("completed", "failed", "canceled", "expired"):
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    counts = batch["request_counts"]
    stack.wait_idle()
    raw64 = max(raw_before, _raw(raw, texts, 64))
    return [
        Row("batchfile", "raw ORT minilm, batch 64 (same texts)", raw64, "texts/s",
            note="1 process, all cores; best of before and after the system run"),
        Row("batchfile", f"{total}-line embedding file vs raw batch 64", total / elapsed, "texts/s", baseline=raw64,
            target=0.9, note=f"{counts['completed']}/{counts['total']} completed, upload and polling included; "
                             f"worker -c {stack.concurrency}"),
    ]

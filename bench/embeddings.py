"""Embeddings: raw ONNX Runtime on minilm (the worker's tokenizer, pooling and session options, batch 1 and
batch 64) beside single-text ``embedding`` jobs sent concurrently through the whole system."""

from __future__ import annotations

import time

from bench.client import post_many
from bench.report import Row
from bench.submit import CLIENTS

_SUBJECTS = ["The cat", "A small robot", "My neighbour", "The old train", "Our team", "A quiet river",
             "The new library", "Every student"]
_VERBS = ["quickly crossed", "carefully studied", "happily painted", "slowly climbed", "proudly opened",
          "secretly visited"]
_OBJECTS = ["the busy market", "a forgotten bridge", "the tall mountain", "an empty stadium",
            "the little garden", "a famous museum", "the frozen lake"]


def sentences(n: int) -> list[str]:
    """``n`` short, distinct English sentences (8-12 tokens), deterministic."""
    out = []
    for i in range(n):
        s, v, o = _SUBJECTS[i % 8], _VERBS[(i // 8) % 6], _OBJECTS[(i // 48) % 7]
        out.append(f"{s} {v} {o} on day {i}.")
    return out


def _raw(runner, texts: list[str], batch: int) -> float:
    runner.embed(texts[:batch])  # warm
    t0 = time.perf_counter()
    for start in range(0, len(texts), batch):
        runner.embed(texts[start:start + batch])
    return len(texts) / (time.perf_counter() - t0)


def run(ctx) -> list[Row]:
    from workers.engine import Engine

    stack = ctx.stack
    if not (stack.model_dir / "minilm" / "model.onnx").is_file():
        return [Row("embeddings", "minilm not built: skipped", 0, "")]
    stack.start_api()
    stack.start_worker()
    stack.wait_idle()
    n_raw = 512 if ctx.quick else 2048
    texts = sentences(max(n_raw, 4096))

    # Raw, in this process: one process owning every core (the best ONNX Runtime does here), and one process
    # with the threads a pool child gets (cores / concurrency), which is what each worker child runs.
    # Each is the best of a measurement before and one after the system run: a raw rate that something else on
    # the machine slowed down for a moment would flatter the ratio (two threads on two cores suffer most).
    engines = (Engine(stack.settings, pool="cpu", processes=1),
               Engine(stack.settings, pool="cpu", processes=stack.concurrency))
    whole, child = (engine.runner("minilm") for engine in engines)

    def measure_raw() -> tuple[float, float, float]:
        return (_raw(whole, texts[:n_raw // 4], 1), _raw(whole, texts[:n_raw], 64), _raw(child, texts[:n_raw], 64))
    before = measure_raw()

    body = lambda i: {"type": "embedding", "model": "minilm", "input": {"input": texts[i % len(texts)]}}  # noqa: E731
    post_many(stack.api_port, "/jobs", body, 64, CLIENTS)  # load minilm in the pool children
    stack.wait_idle()
    stack.reset()
    total = 512 if ctx.quick else 2048
    result = post_many(stack.api_port, "/jobs", body, total, CLIENTS, keep_bodies=True)
    stack.wait_idle()
    jobs = stack.jobs([b["id"] for b in result.bodies])
    succeeded = sum(j.status.value == "succeeded" for j in jobs)
    system = total / (max(j.finished_at or 0 for j in jobs) - result.started)
    raw1, raw64, raw64_child = (max(pair) for pair in zip(before, measure_raw()))
    threads = Engine(stack.settings, processes=1).threads
    return [
        Row("embeddings", "raw ORT minilm, batch 1", raw1, "texts/s",
            note=f"1 process x {threads} threads; each raw row: best of before and after the system run"),
        Row("embeddings", "raw ORT minilm, batch 64", raw64, "texts/s", note=f"1 process x {threads} threads"),
        Row("embeddings", "raw ORT minilm, batch 64, one pool child's threads", raw64_child, "texts/s",
            note=f"1 process x {max(1, threads // stack.concurrency)} threads"),
        Row("embeddings", f"{total} single-text jobs vs raw batch 64", system, "texts/s", baseline=raw64,
            target=0.7, note=f"{succeeded}/{total} succeeded; {CLIENTS} clients; worker -c {stack.concurrency}"),
    ]

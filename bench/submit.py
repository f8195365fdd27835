"""Submit rate: ``POST /jobs`` through gunicorn from 32 concurrent clients, against bare Celery
``apply_async`` from one process, on the same Redis with nothing consuming."""

from __future__ import annotations

from bench.baseline import QUEUE, producer_rate
from bench.client import LoadResult, post_many
from bench.report import Row

IRIS_JOB = {"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}}
CLIENTS = 32


def combined_rate(rates: list[float]) -> float:
    """The rate of equal-sized runs taken together (the harmonic mean of their rates)."""
    return len(rates) / sum(1 / r for r in rates)


def run(ctx) -> list[Row]:
    stack = ctx.stack
    stack.stop_worker()  # nothing consumes: this measures accepting jobs only
    stack.reset()
    stack.start_api()
    total = 1500 if ctx.quick else 6000
    post_many(stack.api_port, "/jobs", lambda i: IRIS_JOB, 300, CLIENTS)  # warm every gunicorn worker
    # Half the POSTs, the baseline twice, the other half (A B B A): this machine's speed drifts by tens of percent
    # within a minute, and a baseline measured only before or after the system would carry that drift.
    first = post_many(stack.api_port, "/jobs", lambda i: IRIS_JOB, total // 2, CLIENTS)
    bare_runs = [producer_rate(stack.redis_server.url, total // 2) for _ in range(2)]
    stack.reset(QUEUE)
    second = post_many(stack.api_port, "/jobs", lambda i: IRIS_JOB, total // 2, CLIENTS)
    loaded = LoadResult.combined(first, second)
    bare = combined_rate(bare_runs)
    bad = {s: n for s, n in loaded.statuses.items() if s != 202}
    stack.reset()
    single = post_many(stack.api_port, "/jobs", lambda i: IRIS_JOB, 300 if ctx.quick else 1000, 1)
    stack.reset()
    note = (f"{CLIENTS} clients, gunicorn {stack.api_workers} workers x {stack.api_threads} threads; halves "
            f"{first.rate / bare_runs[0]:.2f}x, {second.rate / bare_runs[1]:.2f}x (A B B A)")
    if bad:
        note += f"; non-202 answers: {bad}"
    return [
        Row("submit", "POST /jobs rate vs apply_async", loaded.rate, "jobs/s", baseline=bare, target=1.0, note=note),
        Row("submit", f"POST /jobs p50, {CLIENTS} clients", loaded.percentile(0.50), "ms"),
        Row("submit", f"POST /jobs p99, {CLIENTS} clients", loaded.percentile(0.99), "ms", target=25,
            higher_is_better=False),
        Row("submit", "POST /jobs p50, 1 client", single.percentile(0.50), "ms",
            note=f"{single.rate:.0f} jobs/s from one connection"),
        Row("submit", "POST /jobs p99, 1 client", single.percentile(0.99), "ms"),
    ]

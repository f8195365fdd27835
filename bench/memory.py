"""Memory: resident set size of the API server's and the worker's processes after the other parts ran
(so the worker children hold whatever models those parts loaded)."""

from __future__ import annotations

from bench.client import post_many
from bench.report import Row
from bench.submit import IRIS_JOB


def run(ctx) -> list[Row]:
    stack = ctx.stack
    stack.start_api()
    stack.start_worker()
    if not ctx.ran_jobs:  # run alone: give the processes some work first
        post_many(stack.api_port, "/jobs", lambda i: IRIS_JOB, 200, 8)
        if (stack.model_dir / "minilm" / "model.onnx").is_file():
            post_many(stack.api_port, "/jobs", lambda i: {"type": "embedding", "model": "minilm",
                                                          "input": {"input": f"warm up {i}"}}, 64, 8)
        stack.wait_idle()
    rows = []
    for service, label in ((stack.api, "API (gunicorn)"), (stack.worker, "worker")):
        processes = service.rss()
        ctx.processes[label] = processes
        total = sum(rss for _, _, rss in processes) / 1024 ** 2
        largest = max((rss for _, _, rss in processes), default=0) / 1024 ** 2
        rows.append(Row("memory", f"{label}: RSS of {len(processes)} processes", total, "MiB",
                        note=f"largest process {largest:.0f} MiB; shared pages counted in each process"))
    return rows

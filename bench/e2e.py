"""End to end: N tiny iris ``predict`` jobs submitted through the API and all finished by a worker,
against N bare-Celery no-op tasks sent and run by a worker of the same concurrency."""

from __future__ import annotations

from bench.baseline import end_to_end_rate
from bench.client import post_many
from bench.report import Row
from bench.stack import ROOT
from bench.submit import CLIENTS, IRIS_JOB


def run(ctx) -> list[Row]:
    stack = ctx.stack
    stack.reset()
    stack.start_api()
    stack.start_worker()
    post_many(stack.api_port, "/jobs", lambda i: IRIS_JOB, 100, CLIENTS)  # load iris in the pool children
    stack.wait_idle()
    stack.reset()
    total = 1000 if ctx.quick else 3000
    result = post_many(stack.api_port, "/jobs", lambda i: IRIS_JOB, total, CLIENTS, keep_bodies=True)
    stack.wait_idle()
    jobs = stack.jobs([b["id"] for b in result.bodies])
    succeeded = sum(j.status.value == "succeeded" for j in jobs)
    elapsed = max(j.finished_at or 0 for j in jobs) - result.started
    system = total / elapsed
    runs = sum(len(j.attempts) for j in jobs)
    stack.reset()
    bare = end_to_end_rate(stack.redis_server.url, total, stack.env(), stack.concurrency,
                           stack.workdir / "baseline-worker.log", ROOT)
    return [
        Row("e2e", f"{total} iris jobs, submit to last finished", system, "jobs/s", baseline=bare, target=0.8,
            note=f"{succeeded}/{total} succeeded, {runs} attempts; worker -c {stack.concurrency}; "
                 f"POSTs done at {result.rate:.0f}/s"),
    ]

"""End to end: N tiny iris ``predict`` jobs submitted through the API and all finished by a worker,
against N bare-Celery no-op tasks sent and run by a worker of the same concurrency."""

from __future__ import annotations

from dataclasses import dataclass

from bench.baseline import end_to_end_rate
from bench.client import post_many
from bench.report import Row
from bench.stack import ROOT
from bench.submit import CLIENTS, IRIS_JOB, combined_rate


def run(ctx) -> list[Row]:
    stack = ctx.stack
    stack.reset()
    stack.start_api()
    stack.start_worker()
    post_many(stack.api_port, "/jobs", lambda i: IRIS_JOB, 100, CLIENTS)  # load iris in the pool children
    stack.wait_idle()
    total = 1000 if ctx.quick else 3000
    # Half the jobs, the baseline twice, the other half (A B B A), as in bench/submit.py: the machine's speed drifts.
    first = _system(stack, total // 2)
    bare_runs = [end_to_end_rate(stack.redis_server.url, total // 2, stack.env(), stack.concurrency,
                                 stack.workdir / f"baseline-worker-{i}.log", ROOT) for i in range(2)]
    second = _system(stack, total // 2)
    jobs = first.jobs + second.jobs
    succeeded = sum(j.status.value == "succeeded" for j in jobs)
    runs = sum(len(j.attempts) for j in jobs)
    system = combined_rate([first.rate, second.rate])
    bare = combined_rate(bare_runs)
    posts = combined_rate([first.post_rate, second.post_rate])
    return [
        Row("e2e", f"{total} iris jobs, submit to last finished", system, "jobs/s", baseline=bare, target=0.8,
            note=f"{succeeded}/{total} succeeded, {runs} attempts; worker -c {stack.concurrency}; "
                 f"POSTs done at {posts:.0f}/s; halves {first.rate / bare_runs[0]:.2f}x, "
                 f"{second.rate / bare_runs[1]:.2f}x (A B B A)"),
    ]


@dataclass
class _Run:
    jobs: list
    rate: float  # jobs/s from the first POST to the last job's finished_at
    post_rate: float


def _system(stack, total: int) -> _Run:
    """``total`` iris jobs through the API (32 clients) while the worker runs them."""
    stack.reset()
    result = post_many(stack.api_port, "/jobs", lambda i: IRIS_JOB, total, CLIENTS, keep_bodies=True)
    stack.wait_idle()
    jobs = stack.jobs([b["id"] for b in result.bodies])
    elapsed = max(j.finished_at or 0 for j in jobs) - result.started
    stack.reset()
    return _Run(jobs, total / elapsed, result.rate)

"""Priority: how long one ``high`` job takes when it is submitted just as the workers begin on 1,000 queued
``low`` jobs, against the same job on an idle system (both from POST to its ``finished_at``)."""

from __future__ import annotations

import statistics
import time

import requests

from bench.client import post_many, post_one
from bench.report import Row
from bench.submit import CLIENTS, IRIS_JOB
from inferno_jobs.queue import queue_name

LOWS = 1000
PAUSE_TAKES_S = 2  # workers stop consuming a paused queue within about a second


def _one_high(stack) -> tuple[float, object]:
    t0 = time.time()
    status, body = post_one(stack.api_port, "/jobs", {**IRIS_JOB, "priority": "high"})
    if status != 202:
        raise RuntimeError(f"POST /jobs answered {status}: {body}")
    job = stack.wait_job(body["id"])
    return (job.finished_at - t0) * 1000, job


def _queue_action(stack, queue: str, action: str) -> None:
    requests.post(f"http://127.0.0.1:{stack.api_port}/queues/{queue}/{action}", timeout=10).raise_for_status()


def run(ctx) -> list[Row]:
    stack = ctx.stack
    stack.start_api()
    # iris stays loaded in every worker process, as a serving deployment has it (a job should not time a load).
    requests.post(f"http://127.0.0.1:{stack.api_port}/models/iris/load", timeout=60).raise_for_status()
    stack.start_worker()
    stack.wait_idle()
    _one_high(stack)  # warm
    idle = [_one_high(stack)[0] for _ in range(5 if ctx.quick else 10)]

    loaded, depths, overtaken_by = [], [], []
    low = queue_name("cpu", "low")
    low_queue = stack.keys.queued(low)
    for _ in range(1 if ctx.quick else 3):
        stack.reset()
        # The running workers stay as they are (warm, every lane up); the lows are held back by a paused queue
        # until all 1,000 are queued, then released at once.
        _queue_action(stack, low, "pause")
        time.sleep(PAUSE_TAKES_S)
        lows = post_many(stack.api_port, "/jobs", lambda i: {**IRIS_JOB, "priority": "low"}, LOWS, CLIENTS,
                         keep_bodies=True)
        _queue_action(stack, low, "resume")
        deadline = time.monotonic() + 30
        while stack.redis.zcard(low_queue) >= LOWS and time.monotonic() < deadline:
            time.sleep(0.001)  # the workers have begun on the lows
        depths.append(stack.redis.zcard(low_queue))
        latency, high = _one_high(stack)
        loaded.append(latency)
        stack.wait_idle()
        low_jobs = stack.jobs([b["id"] for b in lows.bodies])
        overtaken_by.append(sum((j.finished_at or 0) < high.finished_at for j in low_jobs))
    idle_ms, loaded_ms = statistics.median(idle), statistics.median(loaded)
    return [
        Row("priority", "high job latency, idle system", idle_ms, "ms", note=f"median of {len(idle)}"),
        Row("priority", f"high job behind {LOWS} low jobs vs idle", loaded_ms, "ms", baseline=idle_ms, target=2.0,
            higher_is_better=False,
            note=f"median of {len(loaded)}; lows still queued at submit: {depths}; "
                 f"lows finished before it: {overtaken_by}"),
    ]

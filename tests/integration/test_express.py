"""The express lane of a cpu pool, started for real by ``inferno-jobs worker``: a high job does not wait for the
lower-priority runs that keep every process of the pool busy."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, stop_group, wait_for
from tests.slow_model import build_slow_model

pytestmark = pytest.mark.integration

IRIS = {"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}}
HIGH, NORMAL, LOW = "inferno.cpu.high", "inferno.cpu.normal", "inferno.cpu.low"


@pytest.fixture
def pool(live_settings, live_redis, tmp_path):
    """``inferno-jobs worker --pool cpu -c 1``: one pool process and the express lane's one."""
    env = {**os.environ, **live_settings.env(), "PYTHONPATH": str(ROOT), "INFERNO_ONNX_THREADS": "1"}
    log = open(tmp_path / "worker.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "inferno_jobs.cli", "worker", "--pool", "cpu", "-c", "1"],
                               env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    host = socket.gethostname()
    try:
        wait_for(lambda: all(live_redis.hexists(f"{live_settings.key_prefix}:workers", name)
                             for name in (f"cpu@{host}", f"cpu-express@{host}")), timeout_s=60)
        yield process
    finally:
        stop_group(process, timeout_s=5)  # warm shutdown would wait for the slow job


def _submit(api, body):
    r = api.post("/jobs", json=body)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def test_a_high_job_runs_while_every_pool_process_is_busy_with_low_jobs(api, pool, model_dir):
    build_slow_model(model_dir, name="slow-express", iterations=800)
    slow = {"type": "predict", "model": "slow-express", "input": {"features": [[1, 2, 3, 4]]}, "priority": "low"}
    lows = [_submit(api, slow) for _ in range(2)]
    wait_for(lambda: api.get(f"/jobs/{lows[0]}").get_json()["status"] == "running", timeout_s=30)
    high = _submit(api, {**IRIS, "priority": "high"})
    done = wait_for(lambda: (lambda j: j if j["status"] == "succeeded" else None)(api.get(f"/jobs/{high}").get_json()),
                    timeout_s=30)
    # The pool's one process is still on its first slow low job, the second waits its turn: the high job ran in
    # another process, the express lane's.
    first, second = (api.get(f"/jobs/{i}").get_json() for i in lows)
    assert first["status"] == "running" and second["status"] == "queued"
    assert done["attempt_history"][0]["worker"] != first["attempt_history"][0]["worker"]


def _consuming(celery, node: str) -> list[str]:
    """The queues ``node`` consumes now, as its Celery consumer answers them."""
    answer = celery.control.inspect(destination=[node], timeout=5).active_queues() or {}
    return [q["name"] for q in answer.get(node, [])]


def test_pausing_and_resuming_a_queue_leaves_the_express_lane_on_its_high_queue(api, pool, live_settings,
                                                                               model_dir):
    from workers.celery_app import make_celery

    celery = make_celery(live_settings)
    host = socket.gethostname()
    main, express = f"cpu@{host}", f"cpu-express@{host}"
    assert _consuming(celery, express) == [HIGH]
    for action, main_queues in (("pause", [HIGH, NORMAL]), ("resume", [HIGH, NORMAL, LOW])):
        assert api.post(f"/queues/{LOW}/{action}").status_code == 200
        wait_for(lambda: sorted(_consuming(celery, main)) == sorted(main_queues), timeout_s=15)
    time.sleep(2.5)  # every node's consumer sync has run twice since the resume
    assert _consuming(celery, express) == [HIGH]
    workers = {w["name"]: w for w in api.get("/workers").get_json()["workers"]}
    assert workers[express]["queues"] == [HIGH] and workers[main]["queues"] == [HIGH, NORMAL, LOW]
    queues = {q["name"]: q for q in api.get("/queues").get_json()["queues"]}
    assert queues[LOW]["workers"] == [main] and sorted(queues[HIGH]["workers"]) == sorted([main, express])

    # And it does what it says: with the pool's one process on a slow low job, the next low job waits for it
    # instead of going to the idle express lane.
    build_slow_model(model_dir, name="slow-resumed", iterations=800)
    slow = {"type": "predict", "model": "slow-resumed", "input": {"features": [[1, 2, 3, 4]]}, "priority": "low"}
    lows = [_submit(api, slow) for _ in range(2)]
    wait_for(lambda: api.get(f"/jobs/{lows[0]}").get_json()["status"] == "running", timeout_s=30)
    time.sleep(1.5)
    assert api.get(f"/jobs/{lows[1]}").get_json()["status"] == "queued"

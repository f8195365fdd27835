"""Several worker hosts on one Redis: jobs go to the pool their model names, and when a host goes away (stopped or
killed mid-job) the jobs are served by the host that is left.

The two "hosts" are worker processes on this machine whose ``socket.gethostname()`` answers host1 / host2
(``hostshim/sitecustomize.py``), so attempt ids (``host:pid``) name the host, and a worker cannot see whether the
other host's processes are alive: a dead host's job comes back through its lease, as it would across machines.
A "gpu" pool worker here still runs CPUExecutionProvider (onnxruntime has no CUDA on this machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from api import create_app
from inferno_jobs.config import Settings
from tests.conftest import wait_for
from tests.slow_model import build_slow_model

pytestmark = pytest.mark.integration

SHIM = Path(__file__).resolve().parent / "hostshim"
ROOT = Path(__file__).resolve().parents[2]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


def host_env(host: str) -> dict:
    return {"INFERNO_TEST_HOSTNAME": host, "PYTHONPATH": f"{SHIM}{os.pathsep}{ROOT}"}


@pytest.fixture
def multi_settings(live_settings, model_dir, tmp_path) -> Settings:
    """A model repository of its own: iris (cpu), iris-gpu (the same model with "device": "gpu") and slow."""
    repo = tmp_path / "models"
    repo.mkdir()
    shutil.copytree(model_dir / "iris", repo / "iris")
    shutil.copytree(model_dir / "iris", repo / "iris-gpu")
    config = json.loads((repo / "iris-gpu" / "config.json").read_text())
    (repo / "iris-gpu" / "config.json").write_text(json.dumps({**config, "device": "gpu"}))
    build_slow_model(repo, iterations=150)
    # Identical jobs must each run (on whichever host), not share one run through the result cache.
    return Settings.from_env({}, **{**live_settings.__dict__, "model_dir": repo, "engine_enable_cache": False})


@pytest.fixture
def api(multi_settings, live_redis):
    return create_app(multi_settings, redis_client=live_redis).test_client()


def submit(api, model: str, **extra) -> str:
    r = api.post("/jobs", json={"type": "predict", "model": model, "input": {"features": ROWS}, **extra})
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def finished(api, job_ids: list[str], timeout_s: float = 60) -> list[dict]:
    def all_done():
        jobs = [api.get(f"/jobs/{i}").get_json() for i in job_ids]
        return jobs if all(j["status"] not in ("queued", "running") for j in jobs) else None
    return wait_for(all_done, timeout_s, interval_s=0.1)


def hosts(job: dict) -> list[str]:
    return [a["worker"].rsplit(":", 1)[0] for a in job["attempt_history"]]


def test_jobs_go_to_the_pool_of_their_model_across_hosts(api, start_worker, multi_settings, live_redis):
    cpu = start_worker(multi_settings, pool="cpu", name="cpu-a@host1", concurrency=1, extra_env=host_env("host1"))
    gpu = start_worker(multi_settings, pool="gpu", name="gpu-a@host2", concurrency=1, extra_env=host_env("host2"))
    cpu_jobs = [submit(api, "iris") for _ in range(4)]
    gpu_jobs = [submit(api, "iris-gpu", priority=p) for p in ("high", "normal", "low", "normal")]

    for job in finished(api, cpu_jobs):
        assert job["status"] == "succeeded", job
        assert hosts(job) == ["host1"]
        assert int(job["attempt_history"][0]["worker"].rsplit(":", 1)[1]) in cpu.children()
    for job in finished(api, gpu_jobs):
        assert job["status"] == "succeeded", job
        assert hosts(job) == ["host2"]
        assert int(job["attempt_history"][0]["worker"].rsplit(":", 1)[1]) in gpu.children()
        assert job["result"]["predictions"] == [0, 2]

    # Both hosts report in (GET /health counts them), each with its pool.
    assert api.get("/health").get_json()["workers"] == 2
    beats = {k.decode(): json.loads(v) for k, v in live_redis.hgetall(f"{multi_settings.key_prefix}:workers").items()}
    assert beats["cpu-a@host1"]["pool"] == "cpu" and beats["gpu-a@host2"]["pool"] == "gpu"


def test_when_a_host_stops_or_dies_the_other_host_serves_its_jobs(api, start_worker, multi_settings):
    first = start_worker(multi_settings, pool="cpu", name="cpu-a@host1", concurrency=1, extra_env=host_env("host1"))
    second = start_worker(multi_settings, pool="cpu", name="cpu-b@host2", concurrency=1, extra_env=host_env("host2"))

    # Both hosts serve the same queues.
    served = {h for job in finished(api, [submit(api, "slow") for _ in range(2)], 90) for h in hosts(job)}
    assert served == {"host1", "host2"}

    # host1 stops (warm shutdown, as a deploy or a scale-down does): new jobs all go to host2.
    first.stop(signal.SIGTERM)
    after_stop = finished(api, [submit(api, "iris") for _ in range(5)])
    assert all(j["status"] == "succeeded" and hosts(j) == ["host2"] for j in after_stop)

    # host2 is killed mid-job (a machine lost): a new host1 worker takes the job over once its lease runs out.
    job_id = submit(api, "slow")
    running = wait_for(lambda: (j := api.get(f"/jobs/{job_id}").get_json())["status"] == "running" and j, 30)
    assert hosts(running) == ["host2"]
    os.killpg(second.process.pid, signal.SIGKILL)
    start_worker(multi_settings, pool="cpu", name="cpu-c@host1", concurrency=1, extra_env=host_env("host1"))
    [done] = finished(api, [job_id], timeout_s=60)
    assert done["status"] == "succeeded" and done["result"]["predictions"] == pytest.approx([sum(r) for r in ROWS])
    assert hosts(done) == ["host2", "host1"]
    assert [a["outcome"] for a in done["attempt_history"]] == ["worker_lost", "succeeded"]

"""`inferno-jobs dev` and the README's flow: one command, an embedded Redis, a predict job polled to succeeded
with plain HTTP, Flower up, and Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import requests

from inferno_jobs.redis_server import free_port
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.integration


def test_dev_runs_the_whole_system_and_stops_on_ctrl_c(model_dir, tmp_path):
    api_port, flower_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(MODEL_DIR=str(model_dir), INFERNO_AUTH="disabled", PYTHONPATH=str(ROOT))
    log = open(tmp_path / "dev.log", "w+")
    dev = subprocess.Popen([sys.executable, "-m", "inferno_jobs.cli", "dev", "--port", str(api_port),
                            "--flower-port", str(flower_port), "--no-build"],
                           env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{api_port}"
    try:
        def ready():
            try:
                return requests.get(f"{base}/ready", timeout=2).status_code == 200
            except requests.RequestException:  # not listening yet, or too busy starting to answer in time
                return False
        wait_for(ready, 120, 0.5)
        r = requests.post(f"{base}/jobs", json={"type": "predict", "model": "iris",
                                               "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}}, timeout=5)
        assert r.status_code == 202
        job_id = r.json()["id"]
        done = wait_for(lambda: (j := requests.get(f"{base}/jobs/{job_id}", timeout=5).json())["status"]
                        == "succeeded" and j, 60)
        assert done["result"]["labels"] == ["setosa"]
        wait_for(lambda: requests.get(f"http://127.0.0.1:{flower_port}/healthcheck", timeout=2).text == "OK", 30, 0.5)
        log.seek(0)
        output = log.read()
        assert "embedded Redis on redis://127.0.0.1:" in output and "INFERNO_AUTH=disabled" in output
        redis_port = int(output.split("embedded Redis on redis://127.0.0.1:")[1].split("/")[0])
    finally:
        os.killpg(dev.pid, signal.SIGINT) if dev.poll() is None else None
        try:
            dev.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            raise
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/health", timeout=2)
    import redis
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=redis_port, socket_connect_timeout=1).ping()
    assert not processes_using(f"redis://127.0.0.1:{redis_port}/0")  # no worker or pool child left behind


def processes_using(redis_url: str) -> list[int]:
    """The pids of processes whose environment names ``redis_url`` (what dev gave every part)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if f"REDIS_URL={redis_url}".encode() in f.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:  # gone meanwhile, or not ours to read
                pass
    return found


def test_dev_refuses_a_port_another_server_holds(tmp_path):
    import socket

    from inferno_jobs.dev import run_dev

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        said = []
        assert run_dev(port=held.getsockname()[1], flower_port=free_port(), build_models=False,
                       out=said.append) == 1
    assert "is in use" in said[0] and "--port" in said[0]

"""Flower, wired in: basic auth, task events, each task's job id and model, the worker, queue lengths; checked
through its REST API and in headless Chromium."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import requests

from inferno_jobs.cli import flower_command
from tests.conftest import ROOT, stop_group, wait_for
from tests.unit.test_webhooks import IRIS

pytestmark = pytest.mark.integration

AUTH = ("ops", "s3cret-flower")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def flower(live_settings, live_redis):
    """``inferno-jobs flower`` (the same command line) on a free port, with basic auth."""
    port = free_port()
    settings = dataclasses.replace(live_settings, flower_basic_auth=":".join(AUTH))
    argv, env = flower_command(settings, port)
    env["PYTHONPATH"] = str(ROOT)
    log_path = Path(tempfile.gettempdir()) / f"inferno-flower-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return requests.get(url + "/healthcheck", timeout=1).status_code == 200
        except requests.RequestException:
            return process.poll() is not None and pytest.fail(log_path.read_text()[-3000:])
    wait_for(up, timeout_s=30, interval_s=0.2)
    yield url
    stop_group(process, timeout_s=10)


def test_flower_shows_the_worker_and_each_task_with_its_job_and_model(flower, api, start_worker):
    assert requests.get(flower + "/api/workers", timeout=5).status_code == 401  # basic auth is on
    worker = start_worker()
    job = api.post("/jobs", json={**IRIS, "priority": "high"}).get_json()
    wait_for(lambda: api.get(f"/jobs/{job['id']}").get_json()["status"] == "succeeded")

    def finished_task():
        tasks = requests.get(flower + "/api/tasks", auth=AUTH, timeout=5).json()
        return next((t for t in tasks.values() if job["id"] in (t.get("args") or "")
                     and t.get("state") == "SUCCESS"), None)
    task = wait_for(finished_task, timeout_s=20, interval_s=0.3)
    assert task["name"] == "inferno.run_job" and "'model': 'iris'" in task["kwargs"]
    assert job["id"] in task["result"] and task["worker"] == worker.hostname
    workers = wait_for(lambda: requests.get(flower + "/api/workers", params={"refresh": "true"}, auth=AUTH,
                                            timeout=10).json(), timeout_s=20, interval_s=0.5)
    assert worker.hostname in workers
    broker = requests.get(flower + "/broker", auth=AUTH, timeout=10)
    assert broker.status_code == 200 and "inferno.cpu.high" in broker.text and "inferno.cpu.low" in broker.text

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium): the browser check was skipped")
    tasks_page = chromium_text(flower + "/tasks")
    assert job["id"] in tasks_page and "SUCCESS" in tasks_page and "iris" in tasks_page
    dashboard = chromium_text(flower + "/workers")
    assert worker.hostname in dashboard


def chromium_text(url: str, wait_s: float = 15) -> str:
    """The rendered DOM of ``url`` in headless Chromium, after its scripts ran (Flower's tasks table loads over
    XHR); the basic-auth credentials go in the URL and Chromium reuses them for the page's own requests."""
    with tempfile.TemporaryDirectory() as profile:
        argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                "--virtual-time-budget=8000", "--run-all-compositor-stages-before-draw",
                "--dump-dom",
                url.replace("http://", f"http://{AUTH[0]}:{AUTH[1]}@")]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=wait_s + 30)
        return result.stdout

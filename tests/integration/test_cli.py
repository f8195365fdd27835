"""The CLI against a real API server (gunicorn), a real worker and a private Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests

from inferno_jobs.redis_server import free_port
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.integration


def cli(env, *args, check=True):
    result = subprocess.run([sys.executable, "-m", "inferno_jobs.cli", *args], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(result.stdout + result.stderr)
    return result


@pytest.fixture
def cli_env(live_settings, live_redis):
    env = {**os.environ, **live_settings.env(), "INFERNO_AUTH": "required", "PYTHONPATH": str(ROOT)}
    return env


def test_keys_create_list_revoke(cli_env, live_redis, live_settings):
    created = json.loads(cli(cli_env, "keys", "create", "--name", "svc", "--json").stdout)
    assert created["key"].startswith("ij_") and created["webhook_secret"].startswith("whsec_")
    assert created["tenant"].startswith("tenant_")
    listed = cli(cli_env, "keys", "list").stdout
    assert "svc" in listed and created["key"] not in listed and "active" in listed
    assert created["key"].encode() not in b"".join(live_redis.dump(k) or b"" for k in live_redis.keys("*"))
    cli(cli_env, "keys", "revoke", created["id"])
    assert "revoked" in cli(cli_env, "keys", "list").stdout
    assert cli(cli_env, "keys", "revoke", "key_nope", check=False).returncode != 0


def test_models_list(cli_env):
    out = cli(cli_env, "models", "list").stdout
    assert "iris" in out and "predict" in out and "diabetes" in out


def test_submit_wait_get_cancel_through_a_real_api_server(cli_env, start_worker, live_settings):
    key = json.loads(cli(cli_env, "keys", "create", "--name", "cli", "--json").stdout)["key"]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "inferno_jobs.cli", "api", "--port", str(port)],
                              env=cli_env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _up(f"http://127.0.0.1:{port}/health"), 90, 0.2)
        start_worker()
        env = {**cli_env, "INFERNO_API_URL": f"http://127.0.0.1:{port}", "INFERNO_API_KEY": key}
        done = json.loads(cli(env, "submit", "--type", "predict", "--model", "iris", "--priority", "high",
                              "--input", '{"features": [[6.7, 3.0, 5.2, 2.3]]}', "--wait").stdout)
        assert done["status"] == "succeeded" and done["result"]["labels"] == ["virginica"]
        assert json.loads(cli(env, "get", done["id"]).stdout)["id"] == done["id"]
        assert json.loads(cli(env, "wait", done["id"]).stdout)["status"] == "succeeded"
        conflict = cli(env, "cancel", done["id"], check=False)
        assert conflict.returncode != 0 and "already succeeded" in conflict.stderr
        unauthorized = cli({**env, "INFERNO_API_KEY": "ij_wrong"}, "get", done["id"], check=False)
        assert unauthorized.returncode != 0 and "AUTHENTICATION_FAILED" in unauthorized.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)


def _up(url):
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:  # not listening yet, or too busy starting to answer in time
        return False


def test_errors_ids_and_exit_status_through_a_real_api_server(cli_env, live_settings):
    """No worker: a job stays queued, so it can be canceled and waited for."""
    from tests.integration.live_server import GunicornServer

    key = json.loads(cli(cli_env, "keys", "create", "--name", "cli", "--json").stdout)["key"]
    server = GunicornServer(live_settings, extra_env={"INFERNO_AUTH": "required"})
    try:
        env = {**cli_env, "INFERNO_API_URL": server.url, "INFERNO_API_KEY": key}
        job = json.loads(cli(env, "submit", "--type", "predict", "--model", "iris",
                             "--input", '{"features": [[6.7, 3.0, 5.2, 2.3]]}').stdout)
        crafted = cli(env, "get", "../batches", check=False)  # was: the batch list
        assert crafted.returncode == 1 and crafted.stdout == "" and "NOT_FOUND" in crafted.stderr
        dots = cli(env, "get", "..", check=False)
        assert dots.returncode == 1 and "JOB_NOT_FOUND" in dots.stderr
        invalid = cli(env, "submit", "--type", "predict", "--model", "iris",
                      "--input", '{"features": [[6.7, 3.0, 5.2, 2.3]], "max_tokens": 3}', check=False)
        assert invalid.returncode == 1 and '{"input": {"max_tokens": ["Unknown field."]}}' in invalid.stderr
        cli(env, "cancel", job["id"])
        waited = cli(env, "wait", job["id"], check=False)
        assert waited.returncode == 1 and json.loads(waited.stdout)["status"] == "canceled"
    finally:
        server.close()
    gone = cli({**cli_env, "INFERNO_API_URL": server.url}, "get", job["id"], check=False)
    assert gone.returncode == 1 and gone.stderr.startswith("error: CONNECTION_FAILED: ")
    assert "Traceback" not in gone.stderr and len(gone.stderr.splitlines()) == 1

"""``inferno-jobs dev``: Redis (embedded unless REDIS_URL is set), the API, one cpu worker, a webhooks worker and
Flower in one command; Ctrl-C stops them all."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from inferno_jobs.config import Settings
from inferno_jobs.redis_server import RedisServer


def _wait_http(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return False


# Longer than a worker pool's own stop timeout (workers/pool.py: 30 s), so the pool SIGKILLs its stuck processes
# itself; past it, the part's whole process group is.
STOP_TIMEOUT_S = 40


def _port_taken(host: str, port: int) -> bool:
    """Whether a server listens on ``port`` (a port left in TIME_WAIT by the last run is free, as for gunicorn)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def run_dev(port: int = 8000, flower_port: int = 5555, build_models: bool = True, out=print) -> int:
    """Run the whole system in the foreground until Ctrl-C (or until one part exits)."""
    env_settings = Settings.from_env()
    taken = [p for p in (port, flower_port) if _port_taken(env_settings.api_host, p)]
    if taken:  # else /health could be another server's answer, taken for this one's
        out(f"port {taken[0]} is in use (another server?): pick free ones with --port and --flower-port "
            "(make dev PORT=... FLOWER_PORT=...)")
        return 1
    redis_server = None
    if "REDIS_URL" not in os.environ:
        redis_server = RedisServer(appendonly=True).start()
        out(f"embedded Redis on {redis_server.url} (data in {redis_server.directory}, removed on exit)")
    settings = Settings.from_env(redis_url=redis_server.url if redis_server else env_settings.redis_url,
                                 api_port=port)
    if not settings.auth_enabled:
        out("!! INFERNO_AUTH=disabled: every request is accepted without an API key (local use only) !!")
        if not settings.webhook_secret:  # the local tenant signs with it: make one so webhooks work out of the box
            from inferno_jobs.apikey import new_webhook_secret

            settings = dataclasses.replace(settings, webhook_secret=new_webhook_secret())
            out(f"webhook secret (INFERNO_WEBHOOK_SECRET, this run only): {settings.webhook_secret}")
    if build_models:
        from inferno_jobs.demo import build_demo

        missing = [n for n in ("iris", "diabetes", "minilm", "tiny-gpt") if not (settings.model_dir / n).is_dir()]
        if missing:
            out(f"building demo models into {settings.model_dir}: {', '.join(missing)}")
            for name, where in build_demo(settings.model_dir, missing).items():
                out(f"  {name}: {where}")
    env = dict(os.environ, **settings.env())
    python = sys.executable
    parts = {
        "api": [python, "-m", "inferno_jobs.cli", "api", "--host", settings.api_host, "--port", str(port)],
        "worker": [python, "-m", "inferno_jobs.cli", "worker", "--pool", "cpu"],
        "webhooks": [python, "-m", "inferno_jobs.cli", "worker", "--pool", "webhooks"],
        "flower": [python, "-m", "inferno_jobs.cli", "flower", "--port", str(flower_port)],
    }
    # Each part in a session of its own: Ctrl-C reaches this process only, which stops the parts in order (Redis
    # last: a worker stopping while it is gone hangs retrying it), and can sweep a part's whole process group.
    children = {name: subprocess.Popen(argv, env=env, start_new_session=True) for name, argv in parts.items()}
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    api_url = f"http://{settings.api_host}:{port}"
    if _wait_http(api_url + "/health", 30):
        out(f"API     {api_url}  (GET /health, /openapi.json, POST /jobs)")
        out(f"Flower  http://127.0.0.1:{flower_port}")
        out(f"Redis   {settings.redis_url}")
        out(f"Models  {Path(settings.model_dir).resolve()}")
        if port != 8000:
            out(f"CLI     export INFERNO_API_URL={api_url}")
        out("Ctrl-C stops everything.")
    code = 0
    try:
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    out(f"{name} exited with {child.returncode}; stopping")
                    code = child.returncode or 1
                    stopping = True
            time.sleep(0.3)
    finally:
        _stop(children.values())
        if redis_server:
            redis_server.close()
    return code


def _stop(children) -> None:
    """SIGTERM to each part; each has ``STOP_TIMEOUT_S`` to exit, then its process group is SIGKILLed. The group
    goes in any case, so no process a part started outlives ``dev``."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)  # its session's group: the part and what it started
        child.wait()

"""Helpers for tests that need the API on a real socket (the openai client, SSE, WebSocket): a threaded werkzeug
server, the production server (``inferno-jobs api``: gunicorn), and a worker whose streaming jobs publish tokens
slowly enough to cancel one mid-stream."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from inferno_jobs.config import Settings
from inferno_jobs.redis_server import free_port
from tests.conftest import ROOT, stop_group, wait_for


class LiveServer:
    """The API app on a free port (werkzeug, threaded, as ``inferno-jobs dev`` serves it)."""

    def __init__(self, app):
        from werkzeug.serving import make_server

        self.port = free_port()
        self.server = make_server("127.0.0.1", self.port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(5)


class GunicornServer:
    """``inferno-jobs api`` (gunicorn and its worker class, as deployed) on a free port, for ``settings``."""

    def __init__(self, settings: Settings, workers: int = 1, threads: int = 8, extra_env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **settings.env(), "PYTHONPATH": str(ROOT), **(extra_env or {})}
        self.process = subprocess.Popen([sys.executable, "-m", "inferno_jobs.cli", "api", "--port", str(self.port),
                                         "--workers", str(workers), "--threads", str(threads)], env=env, cwd=ROOT,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for(self._answers, 90, 0.2)
        except AssertionError:
            self.close()
            raise

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def close(self) -> None:
        stop_group(self.process)


# tiny-gpt makes a token in about a millisecond: too fast to cancel a generation halfway. This sitecustomize,
# on the worker's PYTHONPATH only, makes each published token take 20 ms more.
SLOW_TOKENS = '''
import time
import workers.streaming as streaming

_publish = streaming.JobStream.on_token


def on_token(self, piece, index, **kwargs):  # kwargs: logprobs, when the job asked for them
    time.sleep(0.02)
    _publish(self, piece, index, **kwargs)


streaming.JobStream.on_token = on_token
'''


def slow_token_env(tmp_path: Path) -> dict:
    """``extra_env`` for a worker whose streaming jobs publish a token every ~20 ms."""
    shim = tmp_path / "slow_tokens"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SLOW_TOKENS)
    return {"PYTHONPATH": f"{shim}:{ROOT}"}

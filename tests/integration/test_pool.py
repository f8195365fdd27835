"""``run_pool`` supervising real child processes: a pool whose part died stops and exits non-zero."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from inferno_jobs.config import Settings
from workers import pool
from workers.pool import supervise

pytestmark = pytest.mark.integration


def child(code: str) -> tuple[list[str], dict[str, str]]:
    return [sys.executable, "-c", code], dict(os.environ)


SLEEPER = "import time; time.sleep(60)"
# Exits 0 on SIGTERM, as Celery's warm shutdown does.
GRACEFUL = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); time.sleep(60)"


def test_a_child_that_exits_stops_the_others_and_the_pool_exits_non_zero(tmp_path):
    marker = tmp_path / "stopped"
    # The long-lived part records that it got SIGTERM, as Celery's warm shutdown would.
    survivor = (f"import signal, sys, time\n"
                f"signal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').close(), sys.exit(0)))\n"
                f"time.sleep(60)\n")
    started = time.monotonic()
    code = supervise([child("import sys; sys.exit(2)"), child(survivor)], poll_s=0.05, stop_timeout_s=10)
    assert code == 2 and marker.exists() and time.monotonic() - started < 10


def test_a_child_that_exits_0_still_makes_the_pool_exit_1():
    assert supervise([child(SLEEPER), child("pass")], poll_s=0.05, stop_timeout_s=10) == 1


def test_a_child_that_ignores_sigterm_is_killed_after_the_stop_timeout():
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    started = time.monotonic()
    code = supervise([child(stubborn), child("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")],
                     poll_s=0.05, stop_timeout_s=0.5)
    assert code == 128 + signal.SIGKILL and time.monotonic() - started < 10


def test_sigterm_stops_every_child_and_the_pool_exits_0():
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    before = signal.getsignal(signal.SIGTERM)
    try:
        assert supervise([child(GRACEFUL), child(GRACEFUL)], poll_s=0.05, stop_timeout_s=10) == 0
    finally:
        timer.cancel()
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are put back


def test_a_child_that_hangs_in_its_shutdown_after_a_sigterm_is_killed_after_the_stop_timeout():
    # As a Celery worker whose shutdown retries a Redis that stopped first: SIGTERM is taken, the exit never comes.
    hangs = "import signal, time; signal.signal(signal.SIGTERM, lambda *a: time.sleep(60)); time.sleep(60)"
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    started = time.monotonic()
    try:
        code = supervise([child(hangs), child(GRACEFUL)], poll_s=0.05, stop_timeout_s=1)
    finally:
        timer.cancel()
    assert code == 128 + signal.SIGKILL and time.monotonic() - started < 10


def test_run_pool_supervises_the_pool_specs(tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "pool_specs", lambda *a, **k: [child("import sys; sys.exit(3)"), child(SLEEPER)])
    assert pool.run_pool(Settings.from_env({}, model_dir=tmp_path), "cpu", concurrency=1) == 3


def test_a_sigterm_while_the_pool_starts_leaves_nothing_running(monkeypatch):
    """The signal is handled inside the first Popen, before the process is in the pool's list: it still gets it,
    and the second is never started (it would never get it)."""
    popen, started = subprocess.Popen, []

    def start_then_get_sigterm(argv, **kwargs):
        started.append(popen(argv, **kwargs))
        os.kill(os.getpid(), signal.SIGTERM)
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", start_then_get_sigterm)
    began = time.monotonic()
    code = supervise([child(GRACEFUL), child(SLEEPER)], poll_s=0.05, stop_timeout_s=10)
    assert code in (0, 128 + signal.SIGTERM)  # 128 + 15: SIGTERM came before the child set its handler
    assert len(started) == 1 and started[0].poll() is not None and time.monotonic() - began < 10

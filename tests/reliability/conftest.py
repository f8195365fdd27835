"""Fixtures of the reliability tests: a model slow enough that jobs are still running when something dies."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.conftest import wait_for
from tests.slow_model import build_slow_model


@pytest.fixture
def live_settings(live_settings):
    """The cache off: these tests submit identical jobs and count runs, so each one must run, not share a run."""
    return dataclasses.replace(live_settings, engine_enable_cache=False)


@pytest.fixture(scope="session")
def medium_model(model_dir) -> str:
    """``medium``: about 30 ms per run on one thread, no micro-batching (so nothing hides a lost job)."""
    path = build_slow_model(model_dir, name="medium", iterations=40, size=300)
    config = json.loads((path / "config.json").read_text())
    assert config["max_batch_size"] == 1
    return "medium"


def submit_many(api, body: dict, n: int) -> list[str]:
    """Submit ``n`` copies of ``body``; every one must be accepted (202)."""
    ids = []
    for _ in range(n):
        r = api.post("/jobs", json=body)
        assert r.status_code == 202, r.get_json()
        ids.append(r.get_json()["id"])
    return ids


def wait_all_terminal(store, ids: list[str], timeout_s: float) -> list:
    """Wait until every job is in a terminal state; return the records (the failure names the stragglers)."""
    def done():
        jobs = [store.get(i) for i in ids]
        return jobs if all(j.status.terminal for j in jobs) else None
    try:
        return wait_for(done, timeout_s, interval_s=0.25)
    except AssertionError:
        pending = {}
        for i in ids:
            job = store.get(i)
            if not job.status.terminal:
                pending[i] = (job.status.value, len(job.attempts), job.lease_owner)
        raise AssertionError(f"{len(pending)} of {len(ids)} jobs never finished: {list(pending.items())[:10]}")

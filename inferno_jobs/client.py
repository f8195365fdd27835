"""A small Python client for the native API (``/jobs``)."""

from __future__ import annotations

import time
from typing import Any

import requests

from inferno_jobs.errors import ERRORS_BY_CODE, InfernoError, Timeout
from inferno_jobs.job import TERMINAL, JobStatus


class Client:
    """Talks to an inferno-jobs API. Errors come back as the matching :class:`InfernoError` subclass."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout_s: float = 30):
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, **kwargs) -> Any:
        response = self.session.request(method, self.base_url + path, timeout=self.timeout_s, **kwargs)
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                raise InfernoError(f"HTTP {response.status_code}: {response.text[:200]}") from None
            cls = ERRORS_BY_CODE.get(error.get("code"), InfernoError)
            raise cls(error.get("message", ""), details=error.get("details"))
        return response.json()

    def submit(self, type: str, model: str, input: dict, *, priority: str = "normal",
               idempotency_key: str | None = None, **fields) -> dict:
        """Submit a job; returns the job object (status ``queued``)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = {"type": type, "model": model, "input": input, "priority": priority, **fields}
        return self._call("POST", "/jobs", json=body, headers=headers)

    def get(self, job_id: str) -> dict:
        """The job object."""
        return self._call("GET", f"/jobs/{job_id}")

    def list(self, **query) -> dict:
        """A page of jobs (``status``, ``type``, ``batch_id``, ``limit``, ``cursor``)."""
        return self._call("GET", "/jobs", params={k: v for k, v in query.items() if v is not None})

    def cancel(self, job_id: str) -> dict:
        """Cancel a job; returns the job."""
        return self._call("POST", f"/jobs/{job_id}/cancel")

    def wait(self, job_id: str, timeout_s: float = 300, poll_s: float = 0.2) -> dict:
        """Poll until the job is terminal; raises :class:`Timeout` past ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if JobStatus(job["status"]) in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise Timeout(f"job {job_id} still {job['status']} after {timeout_s} s", details={"job_id": job_id})
            time.sleep(poll_s)

    def run(self, type: str, model: str, input: dict, timeout_s: float = 300, **fields) -> dict:
        """Submit and wait: the finished job."""
        return self.wait(self.submit(type, model, input, **fields)["id"], timeout_s=timeout_s)

    # -- batches ---------------------------------------------------------------------------------------------

    def submit_batch(self, path: str, model: str, *, type: str | None = None, priority: str = "normal",
                     params: dict | None = None, webhook_url: str | None = None, dry_run: bool = False) -> dict:
        """Upload a prompt file as a batch; returns the batch (or, with ``dry_run``, the validation report)."""
        import json
        from pathlib import Path

        form = {"model": model, "priority": priority}
        if type:
            form["type"] = type
        if params:
            form["params"] = json.dumps(params)
        if webhook_url:
            form["webhook_url"] = webhook_url
        with open(path, "rb") as f:
            return self._call("POST", "/batches", params={"dry_run": "true"} if dry_run else None, data=form,
                              files={"file": (Path(path).name, f)})

    def get_batch(self, batch_id: str) -> dict:
        """The batch object."""
        return self._call("GET", f"/batches/{batch_id}")

    def list_batches(self, **query) -> dict:
        """A page of batches (``status``, ``limit``, ``cursor``)."""
        return self._call("GET", "/batches", params={k: v for k, v in query.items() if v is not None})

    def cancel_batch(self, batch_id: str) -> dict:
        """Cancel a batch; returns it."""
        return self._call("POST", f"/batches/{batch_id}/cancel")

    def retry_batch(self, batch_id: str) -> dict:
        """A new batch of the failed lines of ``batch_id``."""
        return self._call("POST", f"/batches/{batch_id}/retry")

    def batch_results(self, batch_id: str, errors_only: bool = False):
        """The batch's result lines (dicts), in input order, streamed."""
        import json

        path = f"/batches/{batch_id}/{'errors' if errors_only else 'results'}"
        with self.session.get(self.base_url + path, timeout=self.timeout_s, stream=True) as response:
            if response.status_code >= 400:
                self._call("GET", path)  # raises the matching error
            for line in response.iter_lines():
                if line:
                    yield json.loads(line)

    def wait_batch(self, batch_id: str, timeout_s: float | None = None, poll_s: float = 0.5,
                   on_progress=None) -> dict:
        """Poll until the batch ends, calling ``on_progress(batch)`` after each poll; returns the batch."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            batch = self.get_batch(batch_id)
            if on_progress:
                on_progress(batch)
            if batch["status"] in ("completed", "failed", "canceled"):
                return batch
            if deadline is not None and time.monotonic() > deadline:
                raise Timeout(f"batch {batch_id} still {batch['status']} after {timeout_s} s",
                              details={"batch_id": batch_id})
            time.sleep(poll_s)

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

"""A small Python client for the native API (``/jobs``, ``/batches``).

Every failure comes back as an :class:`~inferno_jobs.errors.InfernoError`: an error answer as the subclass its
``code`` names (``retry_after_s`` filled from ``Retry-After`` on a 429 or 503), an API that cannot be reached as
:class:`ConnectionFailed`, an API that does not answer within ``timeout_s`` as :class:`~inferno_jobs.errors.Timeout`.
The client never retries by itself: after a :class:`~inferno_jobs.errors.RateLimitExceeded` or a 503, wait
``retry_after_s`` and send again (a ``submit`` with the same ``idempotency_key``, so it is never queued twice).
"""

from __future__ import annotations

import math
import time
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import requests

from inferno_jobs.batch import BATCH_TERMINAL_VALUES
# The error classes a client call raises, importable from here: ``except client.JobNotFound``.
from inferno_jobs.errors import (ERRORS_BY_CODE, AuthenticationFailed, AuthorizationFailed, Conflict,  # noqa: F401
                                 ContextLengthExceeded, InferenceFailed, InfernoError, InternalError, InvalidRequest,
                                 JobNotFound, ModelNotFound, ModelNotLoaded, NotFound, PayloadTooLarge,
                                 RateLimitExceeded, Timeout)
from inferno_jobs.job import TERMINAL, JobStatus


class ConnectionFailed(InternalError):
    """Raised by the client when the API cannot be reached at all (refused, unknown host, TLS, a dropped
    connection): nothing was answered, so the message names the URL to check."""

    code = "CONNECTION_FAILED"


def segment(value: str) -> str:
    """``value`` as one URL path segment: ``/``, ``?``, ``#`` and ``%`` escaped, and ``.`` / ``..`` too (a client
    would resolve them as the parent directory), so a crafted id is just an id the API does not know."""
    if not value:
        raise InvalidRequest("an id is never empty")
    if value.strip(".") == "":
        return value.replace(".", "%2E")
    return quote(value, safe="")


def retry_after_s(value: str | None) -> float | None:
    """A ``Retry-After`` header (delay seconds or an HTTP date) as seconds from now; None when absent or bad. A
    date without a zone (``-0000``) is UTC, as HTTP dates always are."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - time.time())


class Client:
    """Talks to an inferno-jobs API. Every failure is an :class:`InfernoError` (see the module docstring)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout_s: float = 30):
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout_s = timeout_s

    def _send(self, method: str, path: str, **kwargs) -> requests.Response:
        url = self.base_url + path
        try:
            return self.session.request(method, url, timeout=self.timeout_s, **kwargs)
        except requests.ConnectTimeout as exc:  # before ReadTimeout's base class: nothing was sent
            raise ConnectionFailed(f"cannot reach the API at {self.base_url}: no connection within "
                                   f"{self.timeout_s} s", details={"url": url}) from exc
        except requests.Timeout as exc:
            raise Timeout(f"the API at {self.base_url} did not answer {method} {path} within {self.timeout_s} s",
                          details={"url": url}) from exc
        except requests.RequestException as exc:
            raise ConnectionFailed(f"cannot reach the API at {self.base_url}: {_reason(exc)}",
                                   details={"url": url}) from exc

    def _call(self, method: str, path: str, **kwargs) -> Any:
        response = self._send(method, path, **kwargs)
        if response.status_code >= 400:
            raise _error(response)
        try:
            return response.json()
        except ValueError:
            raise InternalError(f"the answer to {method} {path} from {self.base_url} is not JSON "
                                f"(HTTP {response.status_code}): is that an inferno-jobs API?") from None

    def submit(self, type: str, model: str, input: dict, *, priority: str = "normal",
               idempotency_key: str | None = None, **fields) -> dict:
        """Submit a job; returns the job object (status ``queued``)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = {"type": type, "model": model, "input": input, "priority": priority, **fields}
        return self._call("POST", "/jobs", json=body, headers=headers)

    def get(self, job_id: str) -> dict:
        """The job object."""
        return self._call("GET", f"/jobs/{segment(job_id)}")

    def list(self, **query) -> dict:
        """A page of jobs (``status``, ``type``, ``batch_id``, ``limit``, ``cursor``)."""
        return self._call("GET", "/jobs", params={k: v for k, v in query.items() if v is not None})

    def cancel(self, job_id: str) -> dict:
        """Cancel a job; returns the job."""
        return self._call("POST", f"/jobs/{segment(job_id)}/cancel")

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
        return self._call("GET", f"/batches/{segment(batch_id)}")

    def list_batches(self, **query) -> dict:
        """A page of batches (``status``, ``limit``, ``cursor``)."""
        return self._call("GET", "/batches", params={k: v for k, v in query.items() if v is not None})

    def cancel_batch(self, batch_id: str) -> dict:
        """Cancel a batch; returns it."""
        return self._call("POST", f"/batches/{segment(batch_id)}/cancel")

    def retry_batch(self, batch_id: str) -> dict:
        """A new batch of the failed lines of ``batch_id``."""
        return self._call("POST", f"/batches/{segment(batch_id)}/retry")

    def batch_results(self, batch_id: str, errors_only: bool = False):
        """The batch's result lines (dicts), in input order, streamed. An error answer raises before the first."""
        import json

        path = f"/batches/{segment(batch_id)}/{'errors' if errors_only else 'results'}"
        with self._send("GET", path, stream=True) as response:
            if response.status_code >= 400:
                raise _error(response)
            try:
                for line in response.iter_lines():
                    if line:
                        yield json.loads(line)
            except requests.RequestException as exc:
                raise ConnectionFailed(f"the API at {self.base_url} broke off the results of {batch_id}: "
                                       f"{_reason(exc)}", details={"url": self.base_url + path}) from exc

    def wait_batch(self, batch_id: str, timeout_s: float | None = None, poll_s: float = 0.5,
                   on_progress=None) -> dict:
        """Poll until the batch ends (any of ``BATCH_TERMINAL``: completed, failed, canceled or expired), calling
        ``on_progress(batch)`` after each poll; returns the batch. Raises :class:`Timeout` past ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            batch = self.get_batch(batch_id)
            if on_progress:
                on_progress(batch)
            if batch["status"] in BATCH_TERMINAL_VALUES:
                return batch
            if deadline is not None and time.monotonic() > deadline:
                raise Timeout(f"batch {batch_id} still {batch['status']} after {timeout_s} s",
                              details={"batch_id": batch_id})
            time.sleep(poll_s)


def _error(response: requests.Response) -> InfernoError:
    """The :class:`InfernoError` an error answer stands for."""
    header_s = retry_after_s(response.headers.get("Retry-After"))
    wait_s = None if header_s is None else math.ceil(header_s)  # whole seconds, as InfernoError carries them
    try:
        error = response.json()["error"]
        code, message, details = error.get("code"), error.get("message", ""), error.get("details")
    except (ValueError, KeyError, TypeError, AttributeError):
        return InfernoError(f"HTTP {response.status_code}: {response.text[:200]}", retry_after_s=wait_s)
    return ERRORS_BY_CODE.get(code, InfernoError)(message, details=details, retry_after_s=wait_s)


def _reason(exc: requests.RequestException) -> str:
    """Why a request got no answer, in a few words: the innermost error (requests wraps urllib3's, which wraps
    the socket's), e.g. ``Connection refused``."""
    inner: BaseException = exc
    for _ in range(10):
        nested = getattr(inner, "reason", None) or (inner.args[0] if inner.args else None)
        nested = nested if isinstance(nested, BaseException) else inner.__cause__ or inner.__context__
        if nested is None:
            break
        inner = nested
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror
    return str(inner) or type(inner).__name__

"""One typed settings object, built from the environment.

Nothing else in inferno-jobs reads ``os.environ``: every module takes a :class:`Settings`.
Durations carry their unit in the name (``ttl_s``, ``max_batch_wait_ms``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """Raised when an environment variable holds a value its setting cannot take; the message names it."""


def _bool(value: str) -> bool:
    word = value.strip().lower()
    if word not in _TRUE | _FALSE:
        raise ValueError("not a boolean: use true or false (1/0, yes/no, on/off)")
    return word in _TRUE


def _list(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Every setting of an inferno-jobs deployment; see docs/configuration.md."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    model_dir: Path = Path("models")
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    auth: str = "required"  # INFERNO_AUTH: required | disabled
    key_prefix: str = "inferno"

    # Job lifecycle.
    default_ttl_s: int = 3600
    default_timeout_s: int = 600
    max_ttl_s: int = 7 * 24 * 3600
    max_timeout_s: int = 24 * 3600
    result_retention_s: int = 24 * 3600
    max_attempts: int = 3
    lease_s: int = 30
    reconcile_interval_s: int = 5
    resend_after_s: int = 900  # jobs still queued this long after their message was sent: their queue gets another
    # A new job stores a run message only while fewer than this many wait in its queue (0: every job stores one);
    # a message is a ticket for its queue, not for its job (inferno_jobs/tickets.py).
    max_waiting_messages: int = 2

    # Workers.
    worker_concurrency: int = 0  # 0: one process per core
    express_workers: int = 1  # processes of a cpu pool's express lane, which serves only its high queue (0: none)
    worker_pool: str = "cpu"
    visibility_timeout_s: int = 3600
    task_sent_events: bool = False  # also publish Celery's task-sent event for every job (Flower's "sent" state)
    max_batch_wait_ms: int = 5
    onnx_threads: int = 0  # 0: cores divided by worker processes

    # Webhooks.
    webhook_secret: str = ""
    webhook_allowed_networks: tuple[str, ...] = ()
    webhook_timeout_s: int = 15  # per attempt: connect plus reading the response
    webhook_max_attempts: int = 10  # per event, the first attempt included
    webhook_retry_base_ms: int = 5000  # backoff before retry k: random(0, min(cap, base * 2**(k-1)))
    webhook_retry_cap_s: int = 1800  # also caps Retry-After; kept under visibility_timeout_s / 2
    webhook_concurrency: int = 16  # threads of a webhooks pool worker
    webhook_secret_grace_s: int = 24 * 3600  # how long the previous secret still signs after a rotation

    # Clients (the CLI's submit/get/wait/cancel).
    api_url: str = "http://127.0.0.1:8000"
    api_key: str = ""

    # Flower.
    flower_basic_auth: str = ""  # user:password[,user2:password2]

    # Request limits.
    max_request_bytes: int = 10 * 1024 * 1024

    # A client that sends nothing of its request body, or reads nothing of the answer, this long loses its connection
    # (the API's gunicorn worker, api/keepalive.py); 0: no limit.
    api_client_stall_s: int = 30

    # Browsers (api/cors.py, docs/security.md#cors): origins that may call the API from a page; "*" any, empty: none.
    cors_origins: tuple[str, ...] = ("*",)

    # Operating it (docs/operations.md): rate limits per API key (0: no limit; a key's record may override them),
    # backpressure, logs, tracing.
    rate_limit_rpm: int = 60  # requests per minute on rate-limited (work-submitting) routes
    rate_limit_rph: int = 1000  # requests per hour
    rate_limit_tpm: int = 10_000  # estimated tokens per minute
    rate_limit_concurrent: int = 10  # a tenant's jobs queued or running at once
    rate_limit_by_ip: bool = False  # with INFERNO_AUTH=disabled: apply the default limits per client IP
    max_queue_depth: int = 100_000  # queued jobs per pool; above it POST /jobs answers 503 (0: no limit)
    queue_full_retry_after_s: int = 5  # Retry-After of that 503
    log_format: str = "json"  # json | text
    log_level: str = "INFO"
    otel_endpoint: str = ""  # OTLP/HTTP endpoint, e.g. http://127.0.0.1:4318; empty: tracing off
    otel_service_name: str = "inferno-jobs"

    # Synchronous and streaming calls (/v1, the seeds' endpoints, WS /ws; docs/openai.md, docs/seeds.md).
    sync_wait_s: int = 60  # a synchronous call answers 504 TIMEOUT (job id in details) past this; a stream's idle limit
    events_retention_s: int = 3600  # a finished job's event stream (status changes, tokens) is kept this long
    cancel_check_ms: int = 100  # how often a streaming generation looks for a cancellation
    sse_keepalive_s: int = 5  # an SSE comment this often while nothing happens (also finds gone clients)
    ws_max_message_bytes: int = 1024 * 1024  # a WS /ws message (at most max_request_bytes); larger closes with 1009
    ws_auth_timeout_s: int = 10  # a WS /ws socket not authenticated this long after it opens is closed
    default_predict_model: str = ""  # the model of POST /predict* when the request names none

    # Batches of prompt files (docs/batches.md).
    batch_max_file_bytes: int = 100 * 1024 * 1024  # an uploaded prompt file (also POST /v1/files)
    batch_max_lines: int = 50_000  # requests in one batch
    batch_max_line_bytes: int = 1024 * 1024  # a longer line fails alone
    batch_retention_s: int = 7 * 24 * 3600  # a finished batch and its results, from when it finished
    batch_validating_timeout_s: int = 600  # a batch left validating this long (its API died) becomes failed
    batch_chunk_timeout_s: int = 1800  # one chunk's engine call
    file_retention_s: int = 7 * 24 * 3600  # files uploaded to POST /v1/files

    # The engine settings that change live through POST /config (docs/configuration.md#runtime-configuration);
    # these are their values until an operator changes them. Seed 001's names: ENGINE_<NAME>.
    engine_enable_batching: bool = True  # micro-batch queued jobs of one model into one engine call
    engine_max_batch_size: int = 0  # jobs per micro-batch; 0: each model's own max_batch_size (config.json)
    engine_batch_timeout: float = 0.0  # seconds a micro-batch waits for more jobs; 0: each model's max_batch_wait_ms
    engine_enable_cache: bool = True  # answer repeated deterministic requests from the result cache
    engine_max_cache_entries: int = 1000  # results kept in the cache (least recently used go first)
    engine_cache_ttl_seconds: int = 3600  # how long a cached result is served
    engine_enable_throttling: bool = False  # refuse new jobs beyond engine_max_concurrent_requests in flight
    engine_max_concurrent_requests: int = 100  # jobs queued or running at once, deployment-wide, when throttling
    engine_enable_quantization: bool = False  # must stay false: models are served as exported (refused if true)

    # Circuit breakers per model (docs/operations.md#circuit-breakers).
    circuit_failure_threshold: int = 5  # consecutive failed engine calls of a model that open its circuit; 0: off
    circuit_open_s: int = 30  # an open circuit refuses new jobs this long, then lets one probe job through
    circuit_probe_s: int = 60  # a probe job that never reports (bad input, canceled, lost) frees its slot after this

    # Operator logins: POST /auth/login and its JWTs (docs/security.md#operator-logins).
    operators: tuple[str, ...] = ()  # username:<hash from `inferno-jobs security hash-password`>, comma-separated
    jwt_secret: str = ""  # HS256 key of operator tokens; empty: a random one generated once and kept in Redis
    jwt_ttl_s: int = 900  # lifetime of an operator token
    login_failures_per_min: int = 5  # failed logins per username and client IP per minute, then 429 (0: no limit)

    # Inbound signed webhooks: POST /webhooks/ingest (docs/webhooks.md#inbound-webhooks).
    ingest_replay_ttl_s: int = 24 * 3600  # how long an inbound webhook-id is remembered (at least 600)
    ingest_secret_grace_s: int = 24 * 3600  # how long a source's previous secret still verifies after a rotation

    # Traces and custom metrics: GET /traces, POST /metrics/custom (docs/operations.md).
    tracing: str = "off"  # on | off: record spans for GET /traces (on whenever INFERNO_OTEL_ENDPOINT is set)
    traces_kept: int = 1000  # finished spans GET /traces keeps in Redis (the oldest go first)
    custom_metrics_max_series: int = 1000  # custom metric series (name + labels + tenant) across the deployment

    @property
    def auth_enabled(self) -> bool:
        """True unless ``INFERNO_AUTH=disabled``."""
        return self.auth != "disabled"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Build settings from ``env`` (default: the process environment), then apply ``overrides``."""
        env = os.environ if env is None else env
        values: dict = {}
        for f in dataclasses.fields(cls):
            name = _ENV_NAMES.get(f.name, "INFERNO_" + f.name.upper())
            if name not in env:
                continue
            raw = env[name]
            default = f.default
            try:
                if isinstance(default, bool):
                    values[f.name] = _bool(raw)
                elif isinstance(default, float):
                    values[f.name] = float(raw)
                elif isinstance(default, int):
                    values[f.name] = int(raw)
                elif isinstance(default, Path):
                    values[f.name] = Path(raw)
                elif isinstance(default, tuple):
                    values[f.name] = _list(raw)
                else:
                    values[f.name] = raw
            except ValueError as exc:
                kind = {bool: "true or false", float: "a number", int: "a whole number"}.get(type(default), "valid")
                raise SettingsError(f"{name} must be {kind}, not {raw!r} ({exc})") from None
        values.update(overrides)
        settings = cls(**values)
        if settings.auth not in {"required", "disabled"}:
            raise SettingsError(f"INFERNO_AUTH must be 'required' or 'disabled', not {settings.auth!r}")
        if settings.engine_enable_quantization:
            raise SettingsError("ENGINE_ENABLE_QUANTIZATION is not supported: export a quantized model into "
                                "MODEL_DIR (docs/configuration.md#runtime-configuration)")
        return settings

    def env(self) -> dict[str, str]:
        """These settings as environment variables, for starting child processes."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = ",".join(value)
            out[_ENV_NAMES.get(f.name, "INFERNO_" + f.name.upper())] = str(value)
        return out


# Settings whose environment name is not INFERNO_<FIELD>.
_ENV_NAMES = {
    "redis_url": "REDIS_URL",
    "model_dir": "MODEL_DIR",
    "api_host": "API_HOST",
    "api_port": "API_PORT",
    "auth": "INFERNO_AUTH",
    **{name: name.upper() for name in (
        "engine_enable_batching", "engine_max_batch_size", "engine_batch_timeout", "engine_enable_cache",
        "engine_max_cache_entries", "engine_cache_ttl_seconds", "engine_enable_throttling",
        "engine_max_concurrent_requests", "engine_enable_quantization")},
}

SETTING_NAMES = {f.name: _ENV_NAMES.get(f.name, "INFERNO_" + f.name.upper()) for f in dataclasses.fields(Settings)}

"""The ``inferno-jobs`` command line.

Exit status: 0 when the command did what it was asked; 1 when it failed (an API error, an API or Redis that cannot
be reached, a file that cannot be written) or waited for a job that did not succeed or a batch that did not
complete; 2 for a usage error (a bad option or argument, unreadable ``--input``), as click reports them. A failure
is one line on stderr: ``error: ...``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import click
import redis

from inferno_jobs.config import Settings
from inferno_jobs.demo import BUILDERS as DEMO_BUILDERS  # names only: a builder's tools load when it runs
from inferno_jobs.job import JobStatus, JobType


def _settings() -> Settings:
    return Settings.from_env()


def _print(data) -> None:
    click.echo(json.dumps(data, indent=2))


class CommandError(click.ClickException):
    """Raised when a command fails for a reason the user can act on: shown as ``error: message``, exit status 1."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", file=file, err=file is None)


def error_line(exc) -> str:
    """What ``error: ...`` says about an :class:`InfernoError`: its code, message and details (compact JSON), and
    for an API that cannot be reached, the setting to check."""
    from inferno_jobs.client import ConnectionFailed

    line = f"{exc.code}: {exc.message}"
    if isinstance(exc, ConnectionFailed):
        return line + " (check INFERNO_API_URL)"
    if exc.details not in (None, {}, []):
        line += " " + json.dumps(exc.details, separators=(", ", ": "), default=str)
    return line


def _redacted(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


class _Group(click.Group):
    """Reports every failure a user can act on as one ``error: ...`` line on stderr and exit status 1: an API
    error (``error: CODE: message details``), an API or Redis that cannot be reached, a file that cannot be
    written, a setting's environment variable holding a bad value. Usage errors stay click's (exit status 2)."""

    def invoke(self, ctx):
        from inferno_jobs.config import SettingsError
        from inferno_jobs.errors import InfernoError

        try:
            return super().invoke(ctx)
        except InfernoError as exc:
            raise CommandError(error_line(exc)) from exc
        except SettingsError as exc:  # a bad environment variable, named by the message
            raise CommandError(str(exc)) from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise CommandError(f"cannot reach Redis at {_redacted(_settings().redis_url)}: {exc} "
                               "(check REDIS_URL)") from exc
        except redis.RedisError as exc:
            raise CommandError(f"Redis at {_redacted(_settings().redis_url)}: {exc} (check REDIS_URL)") from exc
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            raise CommandError(f"{exc.strerror or exc}:{where}".rstrip(":")) from exc


@click.group(cls=_Group)
def main() -> None:
    """inferno-jobs: queue-driven asynchronous inference jobs.

    \b
    Exit status:
      0  done
      1  failed (one "error: ..." line on stderr: an API error, the API
         or Redis unreachable), or wait/--wait saw a job that did not
         succeed or a batch that did not complete
      2  usage error (bad option, argument or --input)
    """


# -- running it ------------------------------------------------------------------------------------------------

@main.command()
@click.option("--port", default=8000, show_default=True, help="API port.")
@click.option("--flower-port", default=5555, show_default=True, help="Flower port.")
@click.option("--no-build", is_flag=True, help="Do not build missing demo models.")
def dev(port: int, flower_port: int, no_build: bool) -> None:
    """API, a cpu worker, Flower and an embedded Redis (unless REDIS_URL is set) in one command."""
    from inferno_jobs.dev import run_dev

    sys.exit(run_dev(port=port, flower_port=flower_port, build_models=not no_build, out=click.echo))


@main.command()
@click.option("--host", default=None, help="Bind address (default API_HOST).")
@click.option("--port", default=None, type=int, help="Port (default API_PORT).")
@click.option("--workers", default=2, show_default=True, help="gunicorn worker processes.")
@click.option("--threads", default=32, show_default=True,
              help="Threads per worker: each open SSE stream, WebSocket or synchronous call holds one.")
def api(host: str | None, port: int | None, workers: int, threads: int) -> None:
    """Serve the API under gunicorn."""
    settings = _settings()
    bind = f"{host or settings.api_host}:{port or settings.api_port}"
    # gthread workers (streams and sockets hold a thread, not the process; gunicorn does not buffer responses) that
    # serve a busy keep-alive connection's requests in place (api/keepalive.py).
    argv = [sys.executable, "-m", "gunicorn", "api.wsgi:app", "--bind", bind, "--workers", str(workers),
            "--worker-class", "api.keepalive.KeepAliveWorker", "--threads", str(threads),
            "--graceful-timeout", "20", *_no_control_socket()]
    os.execv(sys.executable, argv)


def _no_control_socket() -> list[str]:
    """The control socket of newer gunicorns is one path per user ($HOME/.gunicorn/gunicorn.ctl): each API on a
    host took it over and removed it on exit, under the others. Nothing here uses it: off, where gunicorn has it."""
    from gunicorn.config import KNOWN_SETTINGS

    return ["--no-control-socket"] if any("--no-control-socket" in (s.cli or []) for s in KNOWN_SETTINGS) else []


@main.command()
@click.option("--pool", type=click.Choice(["cpu", "gpu", "webhooks"]), default="cpu", show_default=True,
              help="cpu | gpu: inference; webhooks: webhook delivery (threads, INFERNO_WEBHOOK_CONCURRENCY).")
@click.option("--gpus", default=None, callback=lambda ctx, param, value: _gpu_ids(value),
              help="GPU ids for a gpu pool, e.g. 0,1: one worker process per GPU.")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=None,
              help="Processes of a cpu pool (default: cores); threads of a webhooks pool.")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(pool: str, gpus: list[str] | None, concurrency: int | None, loglevel: str) -> None:
    """Run a worker pool serving its queues in strict priority order. If any of its processes exits, the others
    are stopped and the command exits non-zero: a pool never runs with a part missing."""
    from workers.pool import run_pool

    if gpus and pool != "gpu":
        raise click.BadParameter("only a gpu pool runs on GPUs (--pool gpu)", param_hint="--gpus")
    sys.exit(run_pool(_settings(), pool, gpus=gpus, concurrency=concurrency, loglevel=loglevel))


_GPU_ID = re.compile(r"\d+|(GPU|MIG)-[0-9A-Za-z/-]+")  # what CUDA_VISIBLE_DEVICES takes: an index or a UUID


def _gpu_ids(value: str | None) -> list[str] | None:
    """``--gpus 0,1``: distinct GPU indexes (or ``GPU-``/``MIG-`` UUIDs), at least one."""
    if value is None:
        return None
    ids = [g.strip() for g in value.split(",")]  # never empty: "" splits into [""], which is refused
    bad = [g for g in ids if not _GPU_ID.fullmatch(g)]
    if bad:
        raise click.BadParameter(f"not a GPU id: {bad[0]!r} (give indexes such as 0,1)", param_hint="--gpus")
    if len(set(ids)) != len(ids):
        raise click.BadParameter("a GPU is listed twice", param_hint="--gpus")
    return ids


@main.command()
@click.option("--port", default=5555, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True)
def flower(port: int, address: str) -> None:
    """Run Flower on the broker (basic auth from INFERNO_FLOWER_BASIC_AUTH)."""
    argv, env = flower_command(_settings(), port, address)
    os.execve(sys.executable, argv, env)


def flower_command(settings: Settings, port: int = 5555, address: str = "127.0.0.1") -> tuple[list[str], dict]:
    """Flower's command line and environment: task events on, every task's args (job id) and kwargs (model,
    tenant, priority) and result (the jobs it ran) in its tasks table, queue lengths on its broker page, basic
    auth from ``INFERNO_FLOWER_BASIC_AUTH`` (its REST API is open only when no auth is set: bind to localhost).

    Secrets go in the environment, never on the command line, which any local user can read (``ps``): the
    broker is the Celery app's own (``REDIS_URL``) and the password Flower's ``FLOWER_BASIC_AUTH``."""
    argv = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "flower",
            f"--port={port}", f"--address={address}", "--enable_events=True",
            "--tasks_columns=name,uuid,state,args,kwargs,result,received,started,runtime,worker"]
    env = dict(os.environ, **settings.env())
    if settings.flower_basic_auth:
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
    else:
        env.pop("FLOWER_BASIC_AUTH", None)  # INFERNO_FLOWER_BASIC_AUTH decides, not a stray variable
        env.setdefault("FLOWER_UNAUTHENTICATED_API", "true")
    return argv, env


# -- jobs --------------------------------------------------------------------------------------------------------

def _client():
    from inferno_jobs.client import Client

    settings = _settings()
    return Client(settings.api_url, settings.api_key or None)


def _job_input(value: str) -> dict:
    """``--input``: JSON, or ``@path`` to a file of JSON."""
    raw = value
    if value.startswith("@"):
        try:
            raw = Path(value[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise click.BadParameter(f"cannot read {value[1:]}: {reason}", param_hint="--input") from None
    try:
        return json.loads(raw)
    except ValueError as exc:
        where = f" in {value[1:]}" if value.startswith("@") else ""
        raise click.BadParameter(f"not JSON{where}: {exc}", param_hint="--input") from None


def _print_ended(job: dict) -> None:
    """Print a job that a wait saw end; exit status 1 unless it succeeded."""
    _print(job)
    if job["status"] != JobStatus.SUCCEEDED.value:
        sys.exit(1)


@main.command()
@click.option("--type", "job_type", required=True, type=click.Choice([t.value for t in JobType]))
@click.option("--model", required=True)
@click.option("--input", "input_", required=True, help="The job's input as JSON, or @file.json.")
@click.option("--priority", type=click.Choice(["high", "normal", "low"]), default="normal", show_default=True)
@click.option("--webhook-url", default=None)
@click.option("--wait", is_flag=True, help="Wait for the job to end and print it; exit status 1 unless it succeeded.")
def submit(job_type, model, input_, priority, webhook_url, wait) -> None:
    """Submit a job and print it."""
    job_input = _job_input(input_)
    extra = {"webhook_url": webhook_url} if webhook_url else {}
    client = _client()
    job = client.submit(job_type, model, job_input, priority=priority, **extra)
    if wait:
        _print_ended(client.wait(job["id"]))
    else:
        _print(job)


@main.command()
@click.argument("job_id")
def get(job_id: str) -> None:
    """Print a job."""
    _print(_client().get(job_id))


@main.command()
@click.argument("job_id")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait.")
def wait(job_id: str, timeout: float) -> None:
    """Wait for a job to end and print it; exit status 1 unless it succeeded (or past --timeout)."""
    _print_ended(_client().wait(job_id, timeout_s=timeout))


@main.command()
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Cancel a job and print it."""
    _print(_client().cancel(job_id))


# -- keys --------------------------------------------------------------------------------------------------------

def _keyring():
    from inferno_jobs.apikey import KeyRing

    settings = _settings()
    return KeyRing(redis.Redis.from_url(settings.redis_url), settings)


@main.group()
def keys() -> None:
    """API keys: create, list, revoke; rotate a tenant's webhook secret."""


def _limit_options(fn):
    """``--rpm --rph --tpm --concurrent``: a key's own rate limits (docs/operations.md#rate-limits)."""
    for name, what in (("concurrent", "jobs queued or running at once"), ("tpm", "estimated tokens per minute"),
                       ("rph", "requests per hour"), ("rpm", "requests per minute")):
        fn = click.option(f"--{name}", type=click.IntRange(min=0), default=None,
                          help=f"Limit: {what} (0: unlimited; default: INFERNO_RATE_LIMIT_{name.upper()}).")(fn)
    return fn


def _key_options(fn):
    """The options of a new key besides its tenant: ``--name --admin --rpm --rph --tpm --concurrent --json``."""
    fn = click.option("--json", "as_json", is_flag=True, help="Print {key, tenant, webhook_secret} as JSON.")(fn)
    fn = _limit_options(fn)
    fn = click.option("--admin", is_flag=True, help="The key may pause, resume and purge queues.")(fn)
    return click.option("--name", required=True)(fn)


@keys.command("create")
@click.option("--tenant", default=None, help="Add the key to this tenant (default: a new tenant); a tenant no "
                                             "key has yet is made, with a note on stderr (a typo makes a new one).")
@_key_options
def keys_create(name: str, tenant: str | None, admin: bool, rpm, rph, tpm, concurrent, as_json: bool) -> None:
    """Create a key. The key is shown once; only its hash is stored."""
    limits = {k: v for k, v in {"rpm": rpm, "rph": rph, "tpm": tpm, "concurrent": concurrent}.items()
              if v is not None}
    ring = _keyring()
    new_tenant = tenant is not None and not any(k.tenant == tenant for k in ring.list())
    key, record, secret = ring.create(name, tenant, admin=admin, limits=limits)
    if new_tenant:
        click.echo(f"note: no key belonged to tenant {tenant!r}: it is a new tenant", err=True)
    if as_json:
        _print({"key": key, "tenant": record.tenant, "webhook_secret": secret, "id": record.id,
                "admin": record.admin, "limits": record.limits or {}})
    else:
        click.echo(f"key:            {key}\nid:             {record.id}\ntenant:         {record.tenant}\n"
                   f"webhook secret: {secret}\nStore the key now: it is not shown again.")


@keys.command("list")
def keys_list() -> None:
    """List keys (never the keys themselves)."""
    for record in _keyring().list():
        state = "revoked" if record.revoked_at else "active"
        click.echo(f"{record.id}  {record.prefix}...  {record.tenant}  {state}  {record.name}")


@keys.command("limits")
@click.argument("key_id")
@_limit_options
@click.option("--reset", is_flag=True, help="Drop every override first: back to the defaults.")
def keys_limits(key_id: str, rpm, rph, tpm, concurrent, reset: bool) -> None:
    """Show or change a key's rate limits (by key id or its visible prefix)."""
    from inferno_jobs.ratelimit import Limits

    keyring = _keyring()
    changes = {k: v for k, v in {"rpm": rpm, "rph": rph, "tpm": tpm, "concurrent": concurrent}.items()
               if v is not None}
    record = keyring.set_limits(key_id, changes, replace=reset)
    effective = Limits.from_settings(keyring.settings).merged(record.limits)
    _print({"id": record.id, "overrides": record.limits or {}, "effective": effective.__dict__})


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by id."""
    record = _keyring().revoke(key_id)
    click.echo(f"revoked {record.id} ({record.name})")


@keys.command("rotate-secret")
@click.option("--tenant", required=True)
@click.option("--grace-s", type=click.IntRange(min=0), default=None,
              help="Seconds the previous secret keeps signing (default INFERNO_WEBHOOK_SECRET_GRACE_S).")
def keys_rotate_secret(tenant: str, grace_s: int | None) -> None:
    """Give a tenant a new webhook secret (shown once); both secrets sign deliveries during the grace period."""
    keyring = _keyring()
    secret = keyring.rotate_webhook_secret(tenant, grace_s)
    grace = keyring.settings.webhook_secret_grace_s if grace_s is None else grace_s
    click.echo(f"webhook secret: {secret}\nThe previous secret also signs deliveries for {grace} s more.\n"
               "Store the new secret now: it is not shown again.")


# -- security: the seeds' key command, operator logins (docs/security.md) ------------------------------------------

@main.group()
def security() -> None:
    """API keys by user (the seeds' command) and operator password hashes."""


@security.group("api-key")
def security_api_key() -> None:
    """API keys: ``api-key create --user USER_ID`` is ``keys create --tenant USER_ID``."""


@security_api_key.command("create")
@click.option("--user", "tenant", required=True, help="The user (tenant) the key belongs to; a new id makes one.")
@_key_options
@click.pass_context
def security_api_key_create(ctx, **options) -> None:
    """Create a key for a user. The key is shown once; only its hash is stored."""
    ctx.invoke(keys_create, **options)


@security.command("hash-password")
@click.option("--username", default=None, help="Print a whole INFERNO_OPERATORS entry: username:hash.")
def security_hash_password(username: str | None) -> None:
    """Hash an operator's password for INFERNO_OPERATORS (docs/security.md#operator-logins). The password is read
    from a prompt (typed twice) or the first line of standard input, never from the command line."""
    from inferno_jobs.operator import hash_password

    if username is not None and (not username or set(username) & set(":, \t")):
        raise click.BadParameter("a username has no ':', ',' or whitespace", param_hint="--username")
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise click.ClickException("the password is empty")
    encoded = hash_password(password)
    click.echo(f"{username}:{encoded}" if username else encoded)


# -- webhooks ----------------------------------------------------------------------------------------------------

@main.group()
def webhooks() -> None:
    """Webhook tools."""


@webhooks.command("listen")
@click.option("--port", default=9000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--secret", default=None, help="whsec_... to verify with (default INFERNO_WEBHOOK_SECRET).")
def webhooks_listen(port: int, host: str, secret: str | None) -> None:
    """A local receiver: verifies each delivery's signature (401 if bad) and prints its event as JSON."""
    from inferno_jobs.listener import listen

    secret = secret or _settings().webhook_secret
    if not secret:
        raise click.UsageError("give --secret whsec_... (or set INFERNO_WEBHOOK_SECRET)")
    if not _is_webhook_secret(secret):
        raise click.BadParameter("not a webhook secret: it is whsec_ and base64, as `keys create` shows it",
                                 param_hint="--secret / INFERNO_WEBHOOK_SECRET")
    try:
        listen(port, secret, host, out=click.echo)
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def _is_webhook_secret(secret: str) -> bool:
    """A Standard Webhooks secret: ``whsec_`` and non-empty base64 (padding optional). Anything else would start a
    receiver that answers 401 to every delivery."""
    body = secret.removeprefix("whsec_")
    if body == secret or not body:
        return False
    try:
        return bool(base64.b64decode(body + "=" * (-len(body) % 4), validate=True))
    except binascii.Error:
        return False


# -- models ------------------------------------------------------------------------------------------------------

@main.group()
def models() -> None:
    """The model repository."""


@models.command("list")
def models_list() -> None:
    """List the models in MODEL_DIR."""
    from inferno_jobs.model import ModelRepository

    root = _settings().model_dir
    if not root.is_dir():
        raise CommandError(f"MODEL_DIR {str(root)!r} is not a directory (build the demo models with "
                           "`inferno-jobs models build-demo`, or set MODEL_DIR)")
    models = ModelRepository(root).all()
    if not models:
        click.echo(f"no models in {root} (`inferno-jobs models build-demo` builds the demo ones)", err=True)
    width = max([12, *(len(m.name) for m in models)])  # long names keep the columns aligned
    for model in models:
        click.echo(f"{model.name:{width}} {model.type:11} {model.device:4} max_batch={model.max_batch_size}")


@models.command("build-demo")
@click.argument("names", nargs=-1, type=click.Choice(list(DEMO_BUILDERS)))
@click.option("--force", is_flag=True, help="Rebuild models that exist.")
def models_build_demo(names: tuple[str, ...], force: bool) -> None:
    """Build the demo models (iris, diabetes, minilm, tiny-gpt) into MODEL_DIR, offline."""
    from inferno_jobs.demo import build_demo

    for name, where in build_demo(_settings().model_dir, list(names) or None, force=force).items():
        click.echo(f"{name}: {where}")


# -- batches (inferno_jobs/batch_cli.py) ---------------------------------------------------------------------------

from inferno_jobs.batch_cli import batch  # noqa: E402  (the group's module reaches back here for _client)

main.add_command(batch)


# -- inbound webhook sources (inferno_jobs/ingest_cli.py) ------------------------------------------------------------

from inferno_jobs.ingest_cli import ingest_sources  # noqa: E402

main.add_command(ingest_sources)


if __name__ == "__main__":
    main()

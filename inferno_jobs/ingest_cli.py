"""``inferno-jobs ingest-sources``: the inbound webhook sources (docs/webhooks.md#inbound-webhooks)."""

from __future__ import annotations

import json

import click
import redis

from inferno_jobs.apikey import LOCAL_TENANT, KeyRing
from inferno_jobs.config import Settings
from inferno_jobs.errors import InvalidRequest, NotFound
from inferno_jobs.ingest import SourceRegistry
from inferno_jobs.job import JobType, Priority


def _registry() -> SourceRegistry:
    settings = Settings.from_env()
    return SourceRegistry(redis.Redis.from_url(settings.redis_url), settings)


def _tenant(registry: SourceRegistry, tenant: str | None, key_id: str | None) -> str:
    if tenant and key_id:
        raise InvalidRequest("give --tenant or --key-tenant-of, not both")
    if key_id:
        for record in KeyRing(registry.redis, registry.settings).list():
            if key_id in (record.id, record.prefix):
                return record.tenant
        raise NotFound(f"API key {key_id!r} not found")
    if tenant:
        return tenant
    if not registry.settings.auth_enabled:
        return LOCAL_TENANT
    raise InvalidRequest("give --tenant T or --key-tenant-of KEY_ID: the tenant the source's jobs belong to")


@click.group("ingest-sources")
def ingest_sources() -> None:
    """Inbound webhook sources: create, list, revoke; rotate a source's secret."""


@ingest_sources.command("create")
@click.option("--name", required=True, help="The source's name, in its URL: /webhooks/ingest/<name>.")
@click.option("--tenant", default=None, help="The tenant its jobs belong to.")
@click.option("--key-tenant-of", "key_id", default=None, help="...or the tenant of this API key (id or prefix).")
@click.option("--model", default=None, help="Default model of its jobs.")
@click.option("--type", "job_type", type=click.Choice([t.value for t in JobType]), default=None,
              help="Default job type.")
@click.option("--priority", type=click.Choice([p.value for p in Priority]), default=None,
              help="Default priority.")
@click.option("--webhook-url", default=None, help="Default webhook for the jobs' results.")
@click.option("--json", "as_json", is_flag=True, help="Print {name, tenant, secret, url_path, defaults} as JSON.")
def sources_create(name, tenant, key_id, model, job_type, priority, webhook_url, as_json) -> None:
    """Create a source. Its secret is shown once: give it to the sending system."""
    registry = _registry()
    try:
        source = registry.create(name, _tenant(registry, tenant, key_id),
                                 {"model": model, "type": job_type, "priority": priority, "webhook_url": webhook_url})
    except InvalidRequest as exc:  # a bad name, default or tenant option: a usage error (exit 2), as click's own
        raise click.UsageError(exc.message) from None
    path = f"/webhooks/ingest/{source.name}"
    if as_json:
        click.echo(json.dumps({"name": source.name, "tenant": source.tenant, "secret": source.secret,
                               "url_path": path, "defaults": source.defaults}, indent=2))
    else:
        click.echo(f"source:   {source.name}\ntenant:   {source.tenant}\nsecret:   {source.secret}\n"
                   f"endpoint: POST {path}\nStore the secret now: it is not shown again.")


@ingest_sources.command("list")
def sources_list() -> None:
    """List sources (never their secrets)."""
    for source in _registry().list():
        state = "revoked" if source.revoked_at else ("rotating" if source.public()["rotating_until"] else "active")
        defaults = " ".join(f"{k}={v}" for k, v in sorted(source.defaults.items()))
        click.echo(f"{source.name}  {source.tenant}  {state}  {defaults}".rstrip())


@ingest_sources.command("revoke")
@click.argument("name")
def sources_revoke(name: str) -> None:
    """Revoke a source: its events are refused (401) from now on."""
    source = _registry().revoke(name)
    click.echo(f"revoked {source.name}")


@ingest_sources.command("rotate-secret")
@click.argument("name")
@click.option("--grace-s", type=click.IntRange(min=0), default=None,
              help="Seconds the previous secret still verifies (default INFERNO_INGEST_SECRET_GRACE_S).")
def sources_rotate_secret(name: str, grace_s: int | None) -> None:
    """Give a source a new secret (shown once); the previous one still verifies during the grace period."""
    registry = _registry()
    source = registry.rotate_secret(name, grace_s)
    grace = registry.settings.ingest_secret_grace_s if grace_s is None else grace_s
    click.echo(f"secret: {source.secret}\nThe previous secret still verifies for {grace} s more.\n"
               "Store the new secret now: it is not shown again.")

"""Per-request context: the request id (``X-Request-ID`` everywhere) and the caller's tenant."""

from __future__ import annotations

import re

from flask import Flask, current_app, g, request

from inferno_jobs.apikey import LOCAL_TENANT
from inferno_jobs.errors import AuthenticationFailed
from inferno_jobs.engine_config import EngineConfig, EngineConfigReader
from inferno_jobs.job import new_id
from inferno_jobs.operator import is_token

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def services():
    """The app's :class:`api.Services`."""
    return current_app.extensions["inferno"]


def engine_config() -> EngineConfig:
    """The live engine settings (``POST /config``), read from Redis at most once a second per API process."""
    svc = services()
    reader = getattr(svc, "_engine_config", None)
    if reader is None:
        reader = svc._engine_config = EngineConfigReader(svc.redis, svc.store.keys, svc.settings)
    return reader()


def request_id() -> str:
    """This request's id: the caller's ``X-Request-ID`` when it is sane, else a new one."""
    if "request_id" not in g:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _SAFE_ID.match(incoming) else new_id("req")
    return g.request_id


def credential() -> str | None:
    """What the caller authenticates with: ``Authorization: Bearer <x>``, else ``X-API-Key`` (an API key, or an
    operator's login token)."""
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("X-API-Key")


def tenant() -> str:
    """The caller's tenant: from its API key, or the one local tenant when auth is disabled.

    Raises :class:`AuthenticationFailed` for a missing or bad key.
    """
    if "tenant" not in g:
        svc = services()
        if not svc.settings.auth_enabled:
            g.tenant = LOCAL_TENANT
        else:
            key = credential()
            if is_token(key):
                raise AuthenticationFailed("operator tokens (POST /auth/login) open only the management endpoints; "
                                           "use an API key here")
            g.api_key = svc.keyring.authenticate(key)  # its id and limits: api/ratelimit.py
            g.tenant = g.api_key.tenant
    return g.tenant


def init_app(app: Flask) -> None:
    """Echo the request id on every response."""

    @app.after_request
    def _request_id_header(response):
        response.headers["X-Request-ID"] = request_id()
        return response

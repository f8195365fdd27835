"""``POST /auth/login``: operators log in and get a short-lived JWT for the management endpoints
(docs/security.md#operator-logins).

API keys stay the way machines and tenants authenticate. An operator token opens only what
:func:`require_operator_or_key` and ``api.controls.require_admin`` guard (queues, workers, models, runtime
controls); the tenant endpoints refuse it (``api.request_context.tenant``), so a token never gives anyone's jobs.
"""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request
from marshmallow import Schema, fields, validate

from api.body import json_body, load
from api.request_context import credential, services, tenant
from inferno_jobs.operator import Operators, is_token

bp = Blueprint("auth", __name__)


class LoginRequest(Schema):
    """``POST /auth/login``."""

    username = fields.String(required=True, validate=validate.Length(min=1, max=256))
    password = fields.String(required=True, validate=validate.Length(min=1, max=1024))


class TokenResponse(Schema):
    """An operator token: send it as ``Authorization: Bearer <access_token>``."""

    access_token = fields.String()
    token_type = fields.String()
    expires_in = fields.Integer()
    expires_at = fields.String()


# path -> method -> (summary, request schema name or None, success status, response schema name or None, error
# statuses), merged into GET /openapi.json by api/openapi.py; SCHEMAS: name -> marshmallow schema class.
ROUTES: dict = {
    "/auth/login": {"post": ("Operator login: a short-lived JWT for the management endpoints", "LoginRequest", 200,
                             "TokenResponse", (400, 401, 404, 429))},
}
SCHEMAS: dict = {"LoginRequest": LoginRequest, "TokenResponse": TokenResponse}


@bp.record_once
def _setup(state) -> None:
    # Built with the app, so a malformed INFERNO_OPERATORS stops the API at start-up rather than at a login.
    svc = state.app.extensions["inferno"]
    state.app.extensions["inferno.operators"] = Operators(svc.redis, svc.settings)


def operators() -> Operators:
    """The app's :class:`Operators`."""
    return current_app.extensions["inferno.operators"]


def operator() -> str | None:
    """The operator named by the caller's login token; None when it sent no token (an API key, or nothing).

    Raises :class:`AuthenticationFailed` for an expired, forged or foreign token.
    """
    if "operator" not in g:
        token = credential()
        g.operator = operators().verify(token) if is_token(token) else None
    return g.operator


def require_operator_or_key() -> None:
    """Let in an operator with a login token or the holder of any API key (anyone when auth is disabled).

    For management endpoints only: it establishes no tenant, so never use it where a tenant's data is read.
    """
    if services().settings.auth_enabled and operator() is None:
        tenant()


@bp.post("/auth/login")
def login():
    """Exchange an operator's username and password for a JWT (``INFERNO_JWT_TTL_S`` long)."""
    data = load(LoginRequest(), json_body())
    grant = operators().login(data["username"], data["password"], request.remote_addr or "unknown")
    response = jsonify(TokenResponse().dump(grant))
    response.headers["Cache-Control"] = "no-store"
    return response

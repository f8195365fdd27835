"""CORS for browser clients (seed 001: "CORS middleware enabled for all origins"), with flask-cors.

``INFERNO_CORS_ORIGINS`` names the origins a page may call the API from: ``*`` (the default, as the seed has it),
a comma-separated list (``https://app.example.org,https://admin.example.org``), or empty for no CORS headers at
all. Credentials (cookies, HTTP auth kept by the browser) are never allowed: the API authenticates with an
``Authorization`` or ``X-API-Key`` header that the page sets itself, and browsers refuse credentials with ``*``
anyway (docs/security.md#cors). Preflight ``OPTIONS`` requests are answered by flask-cors before any view runs, so
they need no key and count against no rate limit.
"""

from __future__ import annotations

from flask import Flask
from flask_cors import CORS

# Response headers a page's script may read: without this list a browser shows it only the CORS-safelisted ones.
EXPOSED_HEADERS = (
    "X-Request-ID", "X-Job-ID", "Location", "Retry-After", "API-Version", "X-Cache",
    "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-RateLimit-Reset-After",
    "X-RateLimit-Limit-Tokens", "X-RateLimit-Remaining-Tokens",
    "Deprecation", "Sunset", "Link", "openai-processing-ms", "x-should-retry",
)
PREFLIGHT_MAX_AGE_S = 600  # how long a browser may reuse a preflight answer


def init_app(app: Flask) -> None:
    """Answer preflights and put the CORS headers on every response for the allowed origins."""
    origins = list(app.extensions["inferno"].settings.cors_origins)
    if not origins:
        return
    # allow_headers "*" echoes the headers a preflight asks for (Authorization, X-API-Key, Idempotency-Key, the
    # openai client's x-stainless-*...): a wildcard in the answer would not cover Authorization.
    wildcard = "*" in origins
    CORS(app, origins="*" if wildcard else origins, send_wildcard=wildcard, supports_credentials=False,
         expose_headers=list(EXPOSED_HEADERS), max_age=PREFLIGHT_MAX_AGE_S, vary_header=True)

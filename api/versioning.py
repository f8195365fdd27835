"""API versioning and deprecation (docs/api.md#versioning-and-deprecation).

Every response carries ``API-Version``. A route marked with :func:`deprecated` also carries ``Deprecation``
(RFC 9745: ``@<unix time>`` of when it was deprecated), ``Sunset`` (RFC 8594: the HTTP date after which it may be
removed) and ``Link: <...>; rel="deprecation"`` (where to read what replaces it), on its errors too, and
``GET /openapi.json`` shows it with ``deprecated: true``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from email.utils import format_datetime

from flask import Flask, current_app, request

API_VERSION = "1.0"


@dataclass(frozen=True)
class Deprecation:
    """When a route was deprecated, when it may go, and the document that says what to use instead."""

    since: date
    sunset: date
    link: str

    def headers(self) -> dict[str, str]:
        """The response headers that announce it."""
        since = datetime(self.since.year, self.since.month, self.since.day, tzinfo=timezone.utc)
        sunset = datetime(self.sunset.year, self.sunset.month, self.sunset.day, tzinfo=timezone.utc)
        return {"Deprecation": f"@{int(since.timestamp())}", "Sunset": format_datetime(sunset, usegmt=True),
                "Link": f'<{self.link}>; rel="deprecation"; type="text/html"'}


def deprecated(*, since: str, sunset: str, link: str):
    """Mark a view deprecated (put it under the route decorator). ``since`` and ``sunset`` are ISO dates; the
    policy (docs/api.md) keeps a sunset at least six months after ``since``. The view's behaviour is unchanged."""
    notice = Deprecation(date.fromisoformat(since), date.fromisoformat(sunset), link)
    if (notice.sunset - notice.since).days < 182:
        raise ValueError("a deprecated route keeps working for at least six months (docs/api.md)")

    def mark(view):
        view.deprecation = notice
        return view

    return mark


def deprecation_of(endpoint: str | None) -> Deprecation | None:
    """The :class:`Deprecation` of an endpoint's view, None when it is not deprecated."""
    view = current_app.view_functions.get(endpoint) if endpoint else None
    return getattr(view, "deprecation", None)


def init_app(app: Flask) -> None:
    """Put ``API-Version`` on every response, and the deprecation headers on a deprecated route's."""

    @app.after_request
    def _version_headers(response):
        response.headers["API-Version"] = API_VERSION
        notice = deprecation_of(request.endpoint)
        if notice is not None:
            response.headers.update(notice.headers())
        return response

"""(to be written)"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("feature_importance", __name__)

# path -> method -> (summary, request schema name or None, success status, response schema name or None, error
# statuses), merged into GET /openapi.json by api/openapi.py; SCHEMAS: name -> marshmallow schema class.
ROUTES: dict = {}
SCHEMAS: dict = {}

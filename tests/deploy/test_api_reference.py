"""docs/api-reference.md is generated from GET /openapi.json (`make docs`). The test compares the operations (method
and path) in both directions rather than the whole text: routes are still being added, and a summary or schema
wording change should not fail CI, while a documented route that no longer exists (or a route missing from the
reference) should — with the command that fixes it."""

from __future__ import annotations

import re

from api.openapi_markdown import live_spec, operations, render
from tests.deploy.conftest import ROOT

DOC = ROOT / "docs" / "api-reference.md"
FIX = "docs/api-reference.md is out of date: run `make docs` (python -m api.openapi_markdown > docs/api-reference.md)"


def documented() -> set[tuple[str, str]]:
    return set(re.findall(r"^### (GET|POST|PUT|PATCH|DELETE) (/\S*)$", DOC.read_text(), re.M))


def test_every_documented_operation_exists_in_the_spec_and_every_operation_is_documented():
    spec = set(operations(live_spec()))
    doc = documented()
    assert doc, FIX
    assert not doc - spec, f"{FIX}; documented but gone: {sorted(doc - spec)}"
    assert not spec - doc, f"{FIX}; not documented: {sorted(spec - doc)}"


def test_the_reference_shows_each_operations_responses_and_the_schemas():
    text = render(live_spec())
    assert "### POST /jobs" in text and "| 202 |" in text and "### JobResponse" in text

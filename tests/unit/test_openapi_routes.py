"""GET /openapi.json documents every route the API serves, and nothing it does not."""

import re


def flask_operations(app) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        out |= {(method, path) for method in rule.methods - {"HEAD", "OPTIONS"}}
    return out


def test_every_route_is_in_the_openapi_document_and_every_documented_route_exists(make_app):
    app = make_app()
    spec = app.test_client().get("/openapi.json").get_json()
    documented = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    served = flask_operations(app)
    assert not served - documented, f"served but not in api/openapi.py: {sorted(served - documented)}"
    assert not documented - served, f"documented but not served: {sorted(documented - served)}"

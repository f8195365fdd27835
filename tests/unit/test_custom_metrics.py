"""POST /metrics/custom: samples kept in Redis, exposed on GET /metrics as inferno_custom_<name> with a tenant
label; validation, type conflicts and the series cap."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferno_jobs.apikey import KeyRing


def scrape(client) -> dict:
    """``GET /metrics`` as {(sample name, frozenset of labels): value}."""
    text = client.get("/metrics").get_data(as_text=True)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def keyed(make_app, fake_redis):
    """An app with auth on and two tenants' keys."""
    app = make_app(auth="required")
    ring = KeyRing(fake_redis, app.extensions["inferno"].settings)
    key_a, record_a, _ = ring.create("a")
    key_b, record_b, _ = ring.create("b")
    return app.test_client(), {"X-API-Key": key_a}, {"X-API-Key": key_b}, record_a.tenant, record_b.tenant


def test_a_gauge_is_exposed_with_the_tenant_label_and_set_to_the_last_value(keyed):
    client, a, b, tenant_a, tenant_b = keyed
    first = client.post("/metrics/custom", headers=a, json={"name": "queue_len", "value": 42.5, "type": "gauge",
                                                            "labels": {"environment": "production"}})
    assert first.status_code == 201, first.json
    assert first.json["metric"] == "inferno_custom_queue_len" and first.json["value"] == 42.5
    assert first.json["labels"] == {"tenant": tenant_a, "environment": "production"}
    again = client.post("/metrics/custom", headers=a, json={"name": "queue_len", "value": 7,
                                                            "labels": {"environment": "production"}})
    assert again.status_code == 200 and again.json["value"] == 7
    assert client.post("/metrics/custom", headers=b, json={"name": "queue_len", "value": 1,
                                                           "labels": {"environment": "production"}}).status_code == 201
    samples = scrape(client)
    assert samples[("inferno_custom_queue_len", frozenset({("tenant", tenant_a), ("environment", "production")}))] == 7
    assert samples[("inferno_custom_queue_len", frozenset({("tenant", tenant_b), ("environment", "production")}))] == 1


def test_a_counter_adds_up_and_a_histogram_observes(client):
    for value in (2, 3.5):
        response = client.post("/metrics/custom", json={"name": "uploads_total", "value": value, "type": "counter"})
    assert response.json["value"] == 5.5 and response.json["metric"] == "inferno_custom_uploads_total"
    for value in (0.3, 7):
        response = client.post("/metrics/custom", json={"name": "step_seconds", "value": value,
                                                        "type": "histogram", "help": "one step"})
    assert response.json["count"] == 2 and response.json["value"] == pytest.approx(7.3)
    samples = scrape(client)
    assert samples[("inferno_custom_uploads_total", frozenset({("tenant", "local")}))] == 5.5
    assert samples[("inferno_custom_step_seconds_count", frozenset({("tenant", "local")}))] == 2
    assert samples[("inferno_custom_step_seconds_bucket", frozenset({("tenant", "local"), ("le", "0.5")}))] == 1
    assert samples[("inferno_custom_step_seconds_bucket", frozenset({("tenant", "local"), ("le", "+Inf")}))] == 2
    assert "# HELP inferno_custom_step_seconds one step" in client.get("/metrics").get_data(as_text=True)


@pytest.mark.parametrize("body, field", [
    ({"name": "1st", "value": 1}, "name"),
    ({"name": "bad-name", "value": 1}, "name"),
    ({"name": "x_count", "value": 1}, "name"),
    ({"name": "x", "value": float("nan")}, "value"),
    ({"name": "x", "value": "many"}, "value"),
    ({"name": "x", "value": -1, "type": "counter"}, "value"),
    ({"name": "x", "value": 1, "type": "summary"}, "type"),
    ({"name": "x", "value": 1, "labels": {"tenant": "someone-else"}}, "labels"),
    ({"name": "x", "value": 1, "labels": {"__name": "v"}}, "labels"),
    ({"name": "x", "value": 1, "labels": {"env": "v" * 129}}, "labels"),
    ({"name": "x", "value": 1, "labels": {f"l{i}": "v" for i in range(9)}}, "labels"),
    ({"name": "x", "value": 1, "unit": "s"}, "unit"),
])
def test_invalid_samples_are_400_and_store_nothing(client, body, field):
    response = client.post("/metrics/custom", json=body)
    assert response.status_code == 400, response.json
    assert response.json["error"]["code"] == "INVALID_REQUEST" and field in response.json["error"]["details"]
    assert "inferno_custom_" not in client.get("/metrics").get_data(as_text=True)


def test_a_metric_keeps_its_type_and_label_names(client):
    assert client.post("/metrics/custom", json={"name": "depth", "value": 1, "labels": {"q": "a"}}).status_code == 201
    conflict = client.post("/metrics/custom", json={"name": "depth", "value": 1, "type": "counter",
                                                    "labels": {"q": "a"}})
    assert conflict.status_code == 409 and conflict.json["error"]["details"]["type"] == "gauge"
    assert client.post("/metrics/custom", json={"name": "depth", "value": 1, "labels": {"r": "a"}}).status_code == 409


def test_new_series_beyond_the_cap_are_refused_but_existing_ones_update(make_app):
    client = make_app(custom_metrics_max_series=2).test_client()
    for queue in ("a", "b"):
        assert client.post("/metrics/custom", json={"name": "depth", "value": 1,
                                                    "labels": {"q": queue}}).status_code == 201
    refused = client.post("/metrics/custom", json={"name": "depth", "value": 1, "labels": {"q": "c"}})
    assert refused.status_code == 400 and "INFERNO_CUSTOM_METRICS_MAX_SERIES" in refused.json["error"]["message"]
    assert client.post("/metrics/custom", json={"name": "other", "value": 1}).status_code == 400
    assert client.post("/metrics/custom", json={"name": "depth", "value": 5, "labels": {"q": "b"}}).status_code == 200
    assert scrape(client)[("inferno_custom_depth", frozenset({("tenant", "local"), ("q", "b")}))] == 5


def test_pushing_needs_a_key(keyed):
    client = keyed[0]
    assert client.post("/metrics/custom", json={"name": "x", "value": 1}).status_code == 401

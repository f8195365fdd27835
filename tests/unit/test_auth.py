"""Operator logins (POST /auth/login and its JWTs), the `security` CLI commands, API-Version and deprecation headers."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import jwt
import pytest
from click.testing import CliRunner

from inferno_jobs import cli
from inferno_jobs.apikey import KeyRing
from inferno_jobs.operator import AUDIENCE, ISSUER, hash_password, verify_password

LOW = "inferno.cpu.low"
IRIS = {"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]}}
# A cheap hash keeps the tests fast; production hashes use DEFAULT_LOG2_N.
SECRET = "test-secret-of-at-least-thirty-two-characters"
ALICE = f"alice:{hash_password('correct horse', log2_n=10)}"


@pytest.fixture
def operator_app(make_app):
    def build(**overrides):
        return make_app(**{"auth": "required", "operators": (ALICE,), "jwt_secret": SECRET, **overrides})
    return build


def login(client, username="alice", password="correct horse"):
    return client.post("/auth/login", json={"username": username, "password": password})


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_login_gives_a_token_that_opens_the_management_endpoints(operator_app):
    client = operator_app().test_client()
    response = login(client)
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 900
    expires_at = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert abs(expires_at.timestamp() - (time.time() + 900)) < 5
    auth = bearer(body["access_token"])
    paused = client.post(f"/queues/{LOW}/pause", headers=auth)
    assert paused.status_code == 200 and paused.get_json()["queue"]["paused"] is True
    queues = client.get("/queues", headers=auth).get_json()["queues"]
    assert next(q for q in queues if q["name"] == LOW)["paused"] is True
    assert client.get("/workers", headers=auth).status_code == 200
    assert client.get("/models", headers=auth).status_code == 200
    assert client.post(f"/queues/{LOW}/resume", headers=auth).get_json()["queue"]["paused"] is False


def test_a_token_gives_no_tenant_endpoint(operator_app):
    client = operator_app().test_client()
    auth = bearer(login(client).get_json()["access_token"])
    for response in (client.post("/jobs", json=IRIS, headers=auth), client.get("/jobs", headers=auth)):
        assert response.status_code == 401
        error = response.get_json()["error"]
        assert error["code"] == "AUTHENTICATION_FAILED" and "use an API key" in error["message"]


def test_keys_still_work_and_only_admin_keys_control_queues(operator_app, fake_redis):
    app = operator_app()
    client = app.test_client()
    keyring = KeyRing(fake_redis, app.extensions["inferno"].settings)
    plain, _, _ = keyring.create("svc")
    admin, _, _ = keyring.create("ops", admin=True)
    assert client.get("/queues", headers=bearer(plain)).status_code == 200
    refused = client.post(f"/queues/{LOW}/pause", headers=bearer(plain))
    assert refused.status_code == 403 and "POST /auth/login" in refused.get_json()["error"]["message"]
    assert client.post(f"/queues/{LOW}/pause", headers=bearer(admin)).status_code == 200
    assert client.get("/queues").status_code == 401


def test_wrong_password_and_unknown_user_answer_the_same(operator_app):
    client = operator_app().test_client()
    wrong, unknown = login(client, password="wrong"), login(client, username="mallory")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.get_json()["error"] == unknown.get_json()["error"] == {
        "code": "AUTHENTICATION_FAILED", "message": "invalid username or password", "details": None}
    assert login(client, password="").status_code == 400


def test_an_expired_token_is_refused(operator_app):
    client = operator_app(jwt_ttl_s=1).test_client()
    token = login(client).get_json()["access_token"]
    assert client.get("/queues", headers=bearer(token)).status_code == 200
    time.sleep(2.1)
    response = client.post(f"/queues/{LOW}/pause", headers=bearer(token))
    assert response.status_code == 401
    assert response.get_json()["error"]["message"].startswith("token expired")


def test_forged_tokens_are_refused(operator_app):
    client = operator_app().test_client()
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": int(time.time()), "exp": int(time.time()) + 60}
    forged = jwt.encode(claims, "another-secret-of-thirty-two-chars!", algorithm="HS256")
    unsigned = jwt.encode(claims, None, algorithm="none")
    foreign = jwt.encode({**claims, "aud": "someone-else"}, SECRET, algorithm="HS256")
    nobody = jwt.encode({**claims, "sub": "mallory"}, SECRET, algorithm="HS256")
    for token in (forged, unsigned, foreign, nobody):
        response = client.get("/queues", headers=bearer(token))
        assert response.status_code == 401 and response.get_json()["error"]["code"] == "AUTHENTICATION_FAILED"
    assert client.get("/queues", headers=bearer(jwt.encode(claims, SECRET, algorithm="HS256"))).status_code \
        == 200


def test_a_generated_secret_is_shared_by_every_replica(operator_app):
    one, two = operator_app(jwt_secret=""), operator_app(jwt_secret="")
    token = login(one.test_client()).get_json()["access_token"]
    assert two.test_client().get("/queues", headers=bearer(token)).status_code == 200


def test_failed_logins_are_limited_per_user_and_address(operator_app):
    client = operator_app(login_failures_per_min=3).test_client()
    for _ in range(3):
        assert login(client).status_code == 200  # successes do not count
    for _ in range(3):
        assert login(client, password="guess").status_code == 401
    limited = login(client)  # the right password too: no guessing past the limit
    assert limited.status_code == 429 and limited.get_json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert login(client, username="bob", password="guess").status_code == 401  # another user: its own count
    other_address = client.post("/auth/login", json={"username": "alice", "password": "correct horse"},
                                environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert other_address.status_code == 200


def test_without_operators_logins_are_not_configured(make_app, fake_redis):
    client = make_app(auth="required").test_client()
    response = login(client)
    assert response.status_code == 404 and "not configured" in response.get_json()["error"]["message"]
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": int(time.time()), "exp": int(time.time()) + 60}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    assert client.get("/queues", headers=bearer(token)).status_code == 401
    assert not fake_redis.keys("*jwt_secret*")  # nothing was generated for an unconfigured feature


def test_a_malformed_operators_setting_or_a_short_secret_stops_the_app(make_app):
    with pytest.raises(ValueError, match="INFERNO_OPERATORS"):
        make_app(operators=("alice:plaintext-password",))
    with pytest.raises(ValueError, match="INFERNO_JWT_SECRET"):
        make_app(operators=(ALICE,), jwt_secret="short")


def test_every_response_carries_the_api_version(client):
    for response in (client.get("/health"), client.get("/no/such/path"), client.post("/jobs", json={}),
                     client.delete("/health"), client.get("/openapi.json")):
        assert response.headers["API-Version"] == "1.0", response.status_code


def test_the_superseded_route_announces_its_deprecation(client):
    response = client.post("/predict/batch", json={})  # an error answer carries the notice too
    assert response.status_code == 400
    assert response.headers["Deprecation"] == f"@{int(datetime(2026, 11, 25, tzinfo=timezone.utc).timestamp())}"
    assert response.headers["Sunset"] == "Mon, 31 May 2027 00:00:00 GMT"
    assert response.headers["Link"].endswith('; rel="deprecation"; type="text/html"')
    assert "Deprecation" not in client.post("/predict", json={}).headers
    paths = client.get("/openapi.json").get_json()["paths"]
    assert paths["/predict/batch"]["post"]["deprecated"] is True
    assert "deprecated" not in paths["/predict"]["post"] and "deprecated" not in paths["/batches"]["post"]


def test_security_api_key_create_is_keys_create_for_a_user(monkeypatch, fake_redis, settings):
    monkeypatch.setattr(cli.redis.Redis, "from_url", lambda *args, **kwargs: fake_redis)
    env = {"INFERNO_KEY_PREFIX": settings.key_prefix}
    result = CliRunner().invoke(cli.main, ["security", "api-key", "create", "--user", "acme", "--name", "My API Key",
                                           "--rpm", "7", "--json"], env=env)
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)  # stderr notes the new tenant
    record = KeyRing(fake_redis, settings).authenticate(created["key"])
    assert record.tenant == created["tenant"] == "acme" and record.name == "My API Key"
    assert record.limits == {"rpm": 7} and not record.admin
    missing = CliRunner().invoke(cli.main, ["security", "api-key", "create", "--name", "x"], env=env)
    assert missing.exit_code != 0 and "--user" in missing.output


def test_hash_password_reads_stdin_and_its_entry_logs_in(make_app):
    result = CliRunner().invoke(cli.main, ["security", "hash-password", "--username", "carol"], input="pa55 word\n")
    assert result.exit_code == 0, result.output
    entry = result.output.strip()
    username, _, encoded = entry.partition(":")
    assert username == "carol" and "pa55" not in entry and verify_password("pa55 word", encoded)
    assert not verify_password("pa55 wore", encoded)
    client = make_app(auth="required", operators=(entry, ALICE)).test_client()
    assert login(client, "carol", "pa55 word").status_code == 200
    assert CliRunner().invoke(cli.main, ["security", "hash-password"], input="\n").exit_code != 0


def test_model_loads_unloads_and_traces_need_an_admin_key(make_app, fake_redis):
    """A tenant's key must not change what every tenant's jobs run on, nor read every tenant's request spans."""
    app = make_app(auth="required", tracing="on")
    keyring = KeyRing(fake_redis, app.extensions["inferno"].settings)
    plain, _, _ = keyring.create("tenant-a")
    admin, _, _ = keyring.create("ops", admin=True)
    client = app.test_client()
    calls = [("post", "/models/iris/load", None), ("post", "/models/iris/unload", None),
             ("post", "/models/load", {"model_path": "iris"}), ("delete", "/models", None), ("get", "/traces", None)]
    for method, path, body in calls:
        refused = getattr(client, method)(path, json=body, headers={"X-API-Key": plain})
        assert refused.status_code == 403, (path, refused.get_json())
        assert refused.get_json()["error"]["code"] == "AUTHORIZATION_FAILED"
    assert client.get("/traces", headers={"X-API-Key": admin}).status_code == 200
    assert client.get("/models", headers={"X-API-Key": plain}).status_code == 200  # reading stays open to keys

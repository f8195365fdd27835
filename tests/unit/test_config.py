"""Settings come from the environment in one place."""

from pathlib import Path

import pytest

from inferno_jobs.config import SETTING_NAMES, Settings, SettingsError


def test_defaults():
    s = Settings.from_env({})
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.auth_enabled and s.result_retention_s == 24 * 3600


def test_contract_names_are_read():
    s = Settings.from_env({"REDIS_URL": "redis://h:1/2", "MODEL_DIR": "/m", "API_HOST": "0.0.0.0", "API_PORT": "9",
                           "INFERNO_AUTH": "disabled", "INFERNO_WEBHOOK_SECRET": "whsec_x",
                           "INFERNO_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8, ::1/128",
                           "INFERNO_RESULT_RETENTION_S": "60", "INFERNO_LEASE_S": "7"})
    assert s.redis_url == "redis://h:1/2" and s.model_dir == Path("/m") and s.api_port == 9
    assert not s.auth_enabled and s.webhook_secret == "whsec_x"
    assert s.webhook_allowed_networks == ("127.0.0.0/8", "::1/128")
    assert s.result_retention_s == 60 and s.lease_s == 7


def test_bad_auth_value_is_refused():
    with pytest.raises(ValueError):
        Settings.from_env({"INFERNO_AUTH": "maybe"})


@pytest.mark.parametrize("env, words", [
    ({"INFERNO_LEASE_S": "abc"}, "INFERNO_LEASE_S must be a whole number, not 'abc'"),
    ({"INFERNO_LEASE_S": "2.5"}, "INFERNO_LEASE_S must be a whole number, not '2.5'"),
    ({"ENGINE_BATCH_TIMEOUT": "soon"}, "ENGINE_BATCH_TIMEOUT must be a number, not 'soon'"),
    ({"ENGINE_ENABLE_CACHE": "enabled"}, "ENGINE_ENABLE_CACHE must be true or false, not 'enabled'"),
])
def test_a_bad_value_names_its_variable(env, words):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(env)
    assert str(refused.value).startswith(words)


@pytest.mark.parametrize("raw, value", [("true", True), ("On", True), ("1", True), ("yes", True),
                                        ("false", False), ("0", False), ("off", False), ("", False)])
def test_booleans_read_the_usual_words(raw, value):
    assert Settings.from_env({"ENGINE_ENABLE_CACHE": raw}).engine_enable_cache is value


def test_env_round_trip():
    s = Settings.from_env({}, lease_s=9, webhook_allowed_networks=("10.0.0.0/8",))
    assert Settings.from_env(s.env()) == s
    assert SETTING_NAMES["redis_url"] == "REDIS_URL"


def test_nothing_else_reads_os_environ():
    root = Path(__file__).resolve().parents[2]
    offenders = [str(p.relative_to(root)) for d in ("inferno_jobs", "workers", "api") for p in (root / d).rglob("*.py")
                 if "os.environ" in p.read_text() and p.name not in {"config.py"}]
    # Child processes get an environment built from Settings.env(); only that copying may touch os.environ.
    assert set(offenders) <= {"inferno_jobs/dev.py", "inferno_jobs/cli.py", "workers/pool.py"}, offenders

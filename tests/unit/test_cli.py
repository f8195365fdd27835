"""The ``inferno-jobs`` command line: one ``error: ...`` line and a documented exit status (1 a failure, 2 a usage
error) for everything a user can get wrong, against the real API app on a socket (fakeredis, a recording
Celery), a closed port, or a scripted stub where the app cannot give the answer on cue."""

from __future__ import annotations

import json
import socket

import pytest
from click.testing import CliRunner

from inferno_jobs.cli import main
from inferno_jobs.redis_server import free_port
from tests.integration.live_server import LiveServer
from tests.unit.test_client import Stub, batch

IRIS = '{"features": [[5.1, 3.5, 1.4, 0.2]]}'


def run(*args, env=None):
    """The CLI's exit status, stdout and stderr (click's runner keeps them apart)."""
    result = CliRunner().invoke(main, list(args), env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is a bug: the test shows it
    return result.exit_code, result.stdout, result.stderr


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.fixture
def api(make_app):
    server = LiveServer(make_app())
    yield {"INFERNO_API_URL": server.url, "INFERNO_API_KEY": ""}
    server.close()


@pytest.fixture
def closed_api():
    return {"INFERNO_API_URL": f"http://127.0.0.1:{free_port()}"}


# -- 1: what could not be reached, in one line ------------------------------------------------------------------

@pytest.mark.parametrize("args", [["get", "job_1"], ["wait", "job_1"], ["cancel", "job_1"],
                                  ["submit", "--type", "predict", "--model", "iris", "--input", IRIS],
                                  ["batch", "list"], ["batch", "status", "batch_1"], ["batch", "cancel", "b"],
                                  ["batch", "results", "batch_1"], ["batch", "submit", "FILE", "--model", "iris"]])
def test_an_api_that_cannot_be_reached_is_one_error_line_naming_the_url(closed_api, tmp_path, args):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"input": json.loads(IRIS)}) + "\n")
    code, out, err = run(*[str(rows) if a == "FILE" else a for a in args], env=closed_api)
    line = one_error_line(err)
    assert code == 1 and out == ""
    assert closed_api["INFERNO_API_URL"] in line and "INFERNO_API_URL" in line and "refused" in line.lower()


@pytest.mark.parametrize("args", [["keys", "list"], ["keys", "create", "--name", "x"],
                                  ["keys", "rotate-secret", "--tenant", "t"], ["ingest-sources", "list"]])
def test_a_redis_that_cannot_be_reached_is_one_error_line_naming_redis_url(args):
    url = f"redis://user:hunter2@127.0.0.1:{free_port()}/0"
    code, _, err = run(*args, env={"REDIS_URL": url, "INFERNO_AUTH": "required"})
    line = one_error_line(err)
    assert code == 1 and "cannot reach Redis" in line and "REDIS_URL" in line
    assert "127.0.0.1" in line and "hunter2" not in line  # the password stays out of the terminal


def test_submit_input_that_is_not_json_or_not_a_file_is_a_usage_error(api, tmp_path):
    code, _, err = run("submit", "--type", "predict", "--model", "iris", "--input", "{bad", env=api)
    assert code == 2 and "--input" in err and "not JSON" in err
    missing = tmp_path / "nonexist.json"
    code, _, err = run("submit", "--type", "predict", "--model", "iris", "--input", f"@{missing}", env=api)
    assert code == 2 and str(missing) in err and "No such file" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{bad")
    code, _, err = run("submit", "--type", "predict", "--model", "iris", "--input", f"@{bad}", env=api)
    assert code == 2 and f"not JSON in {bad}" in err
    good = tmp_path / "good.json"
    good.write_text(IRIS)
    code, out, _ = run("submit", "--type", "predict", "--model", "iris", "--input", f"@{good}", env=api)
    assert code == 0 and json.loads(out)["status"] == "queued"


def test_an_unknown_demo_model_is_a_usage_error_listing_the_names(tmp_path):
    code, _, err = run("models", "build-demo", "bogus", env={"MODEL_DIR": str(tmp_path)})
    assert code == 2 and "'bogus' is not one of" in err and "tiny-gpt" in err
    assert not list(tmp_path.iterdir())


def test_webhooks_listen_on_a_port_in_use_says_so():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        code, _, err = run("webhooks", "listen", "--port", str(port), "--secret", "whsec_" + "A" * 44)
        assert code == 1 and f"cannot listen on 127.0.0.1:{port}" in one_error_line(err)
        assert "in use" in err
    finally:
        taken.close()


@pytest.mark.parametrize("secret", ["notasecret", "whsec_", "whsec_!!!!", "whsec_a"])
def test_webhooks_listen_refuses_a_secret_that_could_never_verify(secret):
    code, _, err = run("webhooks", "listen", "--port", "0", "--secret", secret)
    assert code == 2 and "not a webhook secret" in err


# -- 4: worker options --------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, what", [(["-c", "-1"], "--concurrency"), (["-c", "0"], "--concurrency"),
                                        (["--pool", "gpu", "--gpus", "0,x"], "not a GPU id"),
                                        (["--pool", "gpu", "--gpus", ""], "not a GPU id"),
                                        (["--pool", "gpu", "--gpus", "0,0"], "twice"),
                                        (["--pool", "cpu", "--gpus", "0"], "only a gpu pool")])
def test_worker_refuses_bad_concurrency_and_gpus_before_starting_anything(monkeypatch, args, what):
    monkeypatch.setattr("workers.pool.run_pool", lambda *a, **k: pytest.fail("a pool was started"))
    code, _, err = run("worker", *args)
    assert code == 2 and what in err


def test_worker_passes_valid_gpus_on(monkeypatch):
    started = {}
    monkeypatch.setattr("workers.pool.run_pool", lambda settings, pool, **kw: started.update(pool=pool, **kw) or 0)
    code, _, _ = run("worker", "--pool", "gpu", "--gpus", "0, 1,GPU-8f6a2c1e-0b7d")
    assert code == 0 and started["gpus"] == ["0", "1", "GPU-8f6a2c1e-0b7d"]


# -- 6: grace periods ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["keys", "rotate-secret", "--tenant", "t"], ["ingest-sources", "rotate-secret", "s"]])
def test_a_negative_grace_period_is_refused_by_both_rotate_commands(args):
    code, _, err = run(*args, "--grace-s", "-5")
    assert code == 2 and "--grace-s" in err and "-5 is not in the range x>=0" in err


# -- 7, 8: what the API says, and every job type ------------------------------------------------------------

def test_an_api_error_prints_its_details(api):
    code, out, err = run("submit", "--type", "predict", "--model", "iris", "--input",
                         '{"features": [[5.1, 3.5, 1.4, 0.2]], "max_tokens": 3}', env=api)
    line = one_error_line(err)
    assert code == 1 and out == "" and line.startswith("error: INVALID_REQUEST: ")
    assert '{"input": {"max_tokens": ["Unknown field."]}}' in line


def test_submit_takes_every_job_type_of_the_api(api):
    code, out, err = run("submit", "--type", "feature_importance", "--model", "iris", "--input", IRIS, env=api)
    assert code == 0, err
    assert json.loads(out)["type"] == "feature_importance"


# -- 3: ids -------------------------------------------------------------------------------------------------

def test_a_crafted_id_is_an_unknown_one(api):
    code, out, err = run("get", "../batches", env=api)
    assert code == 1 and out == "" and "NOT_FOUND" in one_error_line(err)
    code, _, err = run("get", "..", env=api)
    assert code == 1 and "JOB_NOT_FOUND" in one_error_line(err)


# -- exit status of waits -----------------------------------------------------------------------------------

def test_wait_exits_1_on_a_job_that_did_not_succeed(api):
    _, out, _ = run("submit", "--type", "predict", "--model", "iris", "--input", IRIS, env=api)
    job_id = json.loads(out)["id"]
    assert run("cancel", job_id, env=api)[0] == 0
    code, out, err = run("wait", job_id, env=api)
    assert code == 1 and json.loads(out)["status"] == "canceled" and err == ""


def test_wait_exits_0_on_a_job_that_succeeded():
    server = Stub([(200, {}, {"id": "job_1", "status": "succeeded", "result": {}})])
    try:
        code, out, _ = run("wait", "job_1", env={"INFERNO_API_URL": server.url})
        assert code == 0 and json.loads(out)["status"] == "succeeded"
    finally:
        server.close()


# -- 2: batches that expire ---------------------------------------------------------------------------------

def test_batch_status_wait_ends_on_an_expired_batch():
    server = Stub([(200, {}, batch("running")), (200, {}, batch("expired"))])
    try:
        code, out, _ = run("batch", "status", "batch_1", "--wait", env={"INFERNO_API_URL": server.url})
        assert code == 1 and json.loads(out)["status"] == "expired"  # 1: it did not complete
    finally:
        server.close()


def test_batch_results_to_a_file_leaves_nothing_behind_on_an_error(api, tmp_path):
    out = tmp_path / "x.jsonl"
    code, _, err = run("batch", "results", "batch_nope", "--output", str(out), env=api)
    assert code == 1 and "not found" in one_error_line(err) and not out.exists()
    out.write_text("kept\n")
    run("batch", "results", "batch_nope", "--output", str(out), env=api)
    assert out.read_text() == "kept\n" and [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]


def test_batch_results_to_a_file_that_cannot_be_made_names_that_file(api, tmp_path):
    out = tmp_path / "missing" / "x.jsonl"
    code, _, err = run("batch", "results", "batch_nope", "--output", str(out), env=api)
    assert code == 1 and one_error_line(err) == f"error: No such file or directory: {out}"


def test_flowers_command_line_holds_no_secret(monkeypatch):
    """Any local user can read a process's command line (``ps``): Flower's password and the broker URL's
    password reach it through the environment."""
    import dataclasses

    from inferno_jobs.cli import flower_command
    from inferno_jobs.config import Settings

    monkeypatch.setenv("FLOWER_BASIC_AUTH", "stray:value")
    settings = Settings.from_env({}, redis_url="redis://:broker-pass@127.0.0.1:6390/0")
    argv, env = flower_command(dataclasses.replace(settings, flower_basic_auth="ops:flower-pass"), 5999)
    assert not [a for a in argv if "flower-pass" in a or "broker-pass" in a]
    assert env["FLOWER_BASIC_AUTH"] == "ops:flower-pass" and env["REDIS_URL"].endswith("broker-pass@127.0.0.1:6390/0")
    open_argv, open_env = flower_command(settings, 5999)
    assert "FLOWER_BASIC_AUTH" not in open_env and open_env["FLOWER_UNAUTHENTICATED_API"] == "true"
    assert open_argv == argv


def test_a_bad_setting_is_one_error_line_naming_its_variable():
    code, out, err = run("keys", "list", env={"INFERNO_LEASE_S": "abc"})
    assert code == 1 and out == ""
    assert err.strip() == "error: INFERNO_LEASE_S must be a whole number, not 'abc' (invalid literal for int() " \
                          "with base 10: 'abc')"


def test_models_list_says_when_model_dir_is_missing_or_empty(tmp_path):
    code, out, err = run("models", "list", env={"MODEL_DIR": str(tmp_path / "nowhere")})
    assert code == 1 and out == "" and err.startswith(f"error: MODEL_DIR '{tmp_path / 'nowhere'}' is not a directory")
    code, out, err = run("models", "list", env={"MODEL_DIR": str(tmp_path)})
    assert code == 0 and out == "" and err.startswith(f"no models in {tmp_path}")


def test_api_runs_gunicorn_without_the_per_user_control_socket(monkeypatch):
    import inferno_jobs.cli as cli

    ran = []
    monkeypatch.setattr(cli.os, "execv", lambda path, argv: ran.append(argv))
    assert CliRunner().invoke(main, ["api", "--port", "8123"]).exit_code == 0
    argv = ran[0]
    assert argv[argv.index("--bind") + 1].endswith(":8123") and "--no-control-socket" in argv

"""What ``inferno-jobs worker`` starts: the Celery processes of each pool, their queues and their environment."""

from __future__ import annotations

import pytest

from inferno_jobs.config import Settings
from workers.pool import pool_specs


def _queues(argv: list[str]) -> list[str]:
    return argv[argv.index("-Q") + 1].split(",")


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.fixture
def settings(tmp_path):
    return Settings.from_env({}, model_dir=tmp_path)


def test_a_cpu_pool_is_a_prefork_worker_on_its_three_queues_plus_an_express_lane_for_high_jobs(settings,
                                                                                                 monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    (main, main_env), (express, express_env) = pool_specs(settings, "cpu", concurrency=2)
    assert _queues(main) == ["inferno.cpu.high", "inferno.cpu.normal", "inferno.cpu.low"]
    assert _option(main, "--pool") == "prefork" and _option(main, "--concurrency") == "2"
    assert _queues(express) == ["inferno.cpu.high"] and _option(express, "--concurrency") == "1"
    assert _option(express, "-n").startswith("cpu-express@") and _option(main, "-n").startswith("cpu@")
    # ONNX Runtime threads: the cores shared by the pool's processes, in both lanes.
    assert main_env["INFERNO_ONNX_THREADS"] == express_env["INFERNO_ONNX_THREADS"] == "2"


def test_the_express_lane_can_be_sized_or_turned_off(tmp_path):
    [(main, _)] = pool_specs(Settings.from_env({"INFERNO_EXPRESS_WORKERS": "0"}, model_dir=tmp_path), "cpu",
                             concurrency=2)
    assert _queues(main) == ["inferno.cpu.high", "inferno.cpu.normal", "inferno.cpu.low"]
    _, (express, _) = pool_specs(Settings.from_env({"INFERNO_EXPRESS_WORKERS": "2"}, model_dir=tmp_path), "cpu",
                                 concurrency=2)
    assert _option(express, "--concurrency") == "2"


def test_a_gpu_pool_is_one_worker_process_per_gpu_each_seeing_only_its_own(settings):
    specs = pool_specs(settings, "gpu", gpus=["0", "1"])
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in specs] == ["0", "1"]
    for argv, env in specs:
        assert _queues(argv) == ["inferno.gpu.high", "inferno.gpu.normal", "inferno.gpu.low"]
        assert _option(argv, "--concurrency") == "1" and env["INFERNO_WORKER_POOL"] == "gpu"
    assert [_option(argv, "-n").split("@")[0] for argv, _ in specs] == ["gpu0", "gpu1"]


def test_a_webhooks_pool_is_threads_on_the_webhook_queue(settings):
    [(argv, _)] = pool_specs(settings, "webhooks", concurrency=8)
    assert _queues(argv) == ["inferno.webhooks"]
    assert _option(argv, "--pool") == "threads" and _option(argv, "--concurrency") == "8"

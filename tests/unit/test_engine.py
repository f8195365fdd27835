"""The engine of one worker process: a loaded model is loaded again when its files change, and a model whose new
files do not load fails with the reason (kept for the workers' reports) instead of running on the old session."""

from __future__ import annotations

import os
import shutil

import pytest

from inferno_jobs.config import Settings
from inferno_jobs.errors import ModelNotLoaded, ModelNotFound
from workers import engine as engine_module
from workers.engine import Engine

ROW = {"features": [[5.1, 3.5, 1.4, 0.2]]}


@pytest.fixture
def engine(model_dir, tmp_path):
    shutil.copytree(model_dir / "iris", tmp_path / "swap")
    return Engine(Settings.from_env({}, model_dir=tmp_path))


def touch(path, ns=1_000_000):
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + ns))


def test_a_model_whose_file_changed_is_loaded_again_at_most_once_a_second_unless_asked(engine, tmp_path, monkeypatch):
    first = engine.runner("swap")
    assert engine.runner("swap") is first
    touch(tmp_path / "swap" / "model.onnx")
    assert engine.runner("swap") is first  # looked at again only after FILES_CHECK_INTERVAL_S
    again = engine.runner("swap", recheck=True)
    assert again is not first and engine.loaded() == ["swap"]
    assert engine.runner("swap", recheck=True) is again  # unchanged files: the same session
    monkeypatch.setattr(engine_module, "FILES_CHECK_INTERVAL_S", 0.0)
    touch(tmp_path / "swap" / "config.json")
    assert engine.runner("swap") is not again
    assert engine.run("swap", [ROW])[0]["labels"] == ["setosa"]


def test_new_files_that_do_not_load_fail_with_the_reason_and_drop_the_old_session(engine, tmp_path, model_dir):
    engine.runner("swap")
    (tmp_path / "swap" / "model.onnx").write_bytes(b"half a file")
    with pytest.raises(ModelNotLoaded, match="'swap' failed to load"):
        engine.runner("swap", recheck=True)
    assert engine.loaded() == []  # never serve a model the directory no longer holds
    assert "failed to load" in engine.load_errors["swap"]["message"]
    assert engine.load_errors["swap"]["code"] == "MODEL_NOT_LOADED" and engine.load_errors["swap"]["at"] > 0
    shutil.copy(model_dir / "iris" / "model.onnx", tmp_path / "swap" / "model.onnx")
    assert engine.run("swap", [ROW])[0]["labels"] == ["setosa"]
    assert engine.load_errors == {}  # a load that succeeds clears it


def test_a_model_whose_directory_went_away_is_dropped(engine, tmp_path):
    engine.runner("swap")
    shutil.rmtree(tmp_path / "swap")
    with pytest.raises(ModelNotFound):
        engine.runner("swap", recheck=True)
    assert engine.loaded() == []

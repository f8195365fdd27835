"""Demo models, built offline: ``inferno-jobs models build-demo``.

Builders import their heavy tools (scikit-learn, skl2onnx, torch) only when run; serving needs none of them.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# name -> module with build(model_dir, force=False) -> Path
BUILDERS = {
    "iris": "inferno_jobs.demo.tabular",
    "diabetes": "inferno_jobs.demo.tabular",
    "minilm": "inferno_jobs.demo.minilm",
    "tiny-gpt": "inferno_jobs.demo.tinygpt",
}


def build_demo(model_dir: Path, names: list[str] | None = None, force: bool = False) -> dict[str, str]:
    """Build the demo models into ``model_dir``; returns name -> path, or the reason a model was skipped.

    A builder whose optional build tool is missing (torch for tiny-gpt) is skipped with a message, not an error.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    for name in names or list(BUILDERS):
        if name not in BUILDERS:
            raise ValueError(f"unknown demo model {name!r}; choose from {', '.join(BUILDERS)}")
        module = importlib.import_module(BUILDERS[name])
        try:
            path = module.build(model_dir, name=name, force=force) if name in ("iris", "diabetes") \
                else module.build(model_dir, force=force)
        except ImportError as exc:
            out[name] = f"skipped: {exc.name or exc} is not installed (pip install 'inferno-jobs[build]')"
            log.warning("demo model %s skipped: %s", name, exc)
            continue
        out[name] = str(path)
    return out

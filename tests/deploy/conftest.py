"""Deployment tests: render the Helm chart with Helm's own engine and validate manifests and the compose file
against their schemas, offline. The tools come from the `deploy` extra (`make install`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHART = ROOT / "helm" / "inferno-jobs"
INSTALL_HINT = "pip install -e '.[deploy]' (make install)"


@pytest.fixture(scope="session")
def helm():
    return pytest.importorskip("helm_python", reason=f"helm-python-sdk (Helm's engine) is not installed: {INSTALL_HINT}")


@pytest.fixture(scope="session")
def kubernetes_validate():
    return pytest.importorskip("kubernetes_validate", reason=f"kubernetes-validate is not installed: {INSTALL_HINT}")


@pytest.fixture(scope="session")
def jsonschema():
    return pytest.importorskip("jsonschema", reason=f"jsonschema is not installed: {INSTALL_HINT}")


def load_json(name: str) -> dict:
    return json.loads((HERE / name).read_text())

"""compose/docker-compose.yml against the Compose Specification's JSON schema (vendored, see SCHEMAS.md), plus the
checks `docker compose config` would make that a schema cannot: interpolated variables, references between
services, volumes, files; the Dockerfiles; Prometheus and Grafana wiring; compose/.env.example complete.

Not validated here (no Docker engine on this machine): building the images, running the stack, the NVIDIA
device reservation on a real GPU host.
"""

from __future__ import annotations

import importlib.util
import json
import re

import yaml

from inferno_jobs.config import SETTING_NAMES
from inferno_jobs.metrics import SPECS
from tests.deploy.conftest import ROOT, load_json

COMPOSE_DIR = ROOT / "compose"
COMPOSE = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())
VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?:[:?\-][^}]*)?\}")


def env_example_module():
    spec = importlib.util.spec_from_file_location("env_example", ROOT / "scripts" / "env_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def env_example_names() -> dict[str, str]:
    """NAME -> value of every line of compose/.env.example, commented out (# NAME=value) or not."""
    out = {}
    for line in (COMPOSE_DIR / ".env.example").read_text().splitlines():
        m = re.fullmatch(r"(?:# )?([A-Z][A-Z0-9_]*)=(.*)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_the_compose_file_is_valid_against_the_compose_specification(jsonschema):
    schema = load_json("compose-spec.schema.json")
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(COMPOSE), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_catches_a_mistake(jsonschema):
    broken = json.loads(json.dumps(COMPOSE))
    broken["services"]["api"]["restart_policy"] = "always"
    assert not jsonschema.Draft7Validator(load_json("compose-spec.schema.json")).is_valid(broken)


def test_services_volumes_and_files_that_the_compose_file_names_exist():
    services = COMPOSE["services"]
    assert {"redis", "models", "api", "worker-cpu", "worker-gpu", "worker-webhooks", "flower", "prometheus",
            "grafana"} <= set(services)
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), source
            else:
                assert source in COMPOSE["volumes"], source
        build = service.get("build")
        if build:
            assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).is_file()


def test_redis_keeps_jobs_and_the_gpu_pool_is_optional():
    redis = " ".join(COMPOSE["services"]["redis"]["command"])
    for setting in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert setting in redis
    assert COMPOSE["services"]["redis"]["volumes"][0].endswith(":/data")
    gpu = COMPOSE["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert all("profiles" not in s for n, s in COMPOSE["services"].items() if n != "worker-gpu")
    assert COMPOSE["services"]["api"]["command"][:2] == ["inferno-jobs", "api"]
    assert COMPOSE["services"]["models"]["command"][:3] == ["inferno-jobs", "models", "build-demo"]


def test_images_api_carries_no_onnx_runtime_and_workers_do():
    api = (ROOT / "docker" / "api.Dockerfile").read_text()
    assert "'.[api]'" in api and "onnxruntime" not in api.replace('! python -c "import onnxruntime"', "")
    assert 'ARG EXTRAS=worker' in (ROOT / "docker" / "worker.Dockerfile").read_text()
    gpu = (ROOT / "docker" / "gpu.Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:[\w.\-]+-runtime", gpu, re.M) and "'.[gpu]'" in gpu
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), f"{dockerfile.name}: {source}"


def test_env_example_names_every_setting_and_every_compose_variable():
    names = env_example_names()
    module = env_example_module()
    missing = set(SETTING_NAMES.values()) - set(names)
    unknown = set(names) - set(SETTING_NAMES.values()) - set(module.COMPOSE_ONLY)
    assert not missing and not unknown, (f"compose/.env.example is out of date (missing {sorted(missing)}, "
                                         f"unknown {sorted(unknown)}): run `make env-example`")
    used = set(VARIABLE.findall((COMPOSE_DIR / "docker-compose.yml").read_text()))
    assert used <= set(names), f"docker-compose.yml uses {sorted(used - set(names))} that .env.example lacks"


def test_env_example_sets_what_containers_need_and_shows_library_defaults():
    # Not an exact comparison with the generator: its comments come from docs/configuration.md, which changes.
    names, module = env_example_names(), env_example_module()
    for name, value in module.COMPOSE_VALUES.items():
        assert names[name] == value, "run `make env-example`"
    assert names["INFERNO_DEFAULT_TTL_S"] == "3600" and names["INFERNO_MAX_QUEUE_DEPTH"] == "100000"


def _metric_names() -> set[str]:
    names = set()
    for spec in SPECS.values():
        base = f"inferno_{spec.name}"
        names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"} if spec.histogram else {f"{base}_total"}
    gauges = (ROOT / "api" / "metrics.py").read_text()
    names |= set(re.findall(r'GaugeMetricFamily\(\s*"(inferno_\w+)"', gauges))
    return names


def test_prometheus_scrapes_the_api_and_flower_and_the_dashboard_uses_metrics_that_exist():
    prometheus = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {"api:8000", "flower:5555"}
    dashboard = json.loads((COMPOSE_DIR / "grafana" / "dashboards" / "inferno-jobs.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\binferno_\w+", e)}
    assert used and used <= _metric_names(), f"unknown metrics: {sorted(used - _metric_names())}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("status", "queue depth", "queue wait", "run time", "webhook"):
        assert topic in titles
    datasource = yaml.safe_load((COMPOSE_DIR / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"

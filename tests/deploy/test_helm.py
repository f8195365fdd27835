"""The Helm chart, rendered by Helm's Go engine (helm-python-sdk), every manifest validated against the Kubernetes
JSON schemas (kubernetes-validate, strict: unknown fields fail) and KEDA's objects against tests/deploy/keda.schema.json.

Not validated here: the bitnami/redis subchart (fetched by `helm dependency build`, not offline), admission by a
real API server (defaulting, quotas, the NVIDIA device plugin), and that the images exist.
"""

from __future__ import annotations

import pytest
import yaml

from tests.deploy.conftest import CHART, load_json

RELEASE, NAMESPACE = "inferno", "jobs"
K8S_VERSIONS = ("1.29.0", "1.33.0")  # the oldest and a recent minor that kubernetes-validate bundles

EXTERNAL = {
    "redis": {"enabled": False},
    "externalRedis": {"url": "redis://:secret@redis.example.internal:6379/0"},
    "keda": {"redisAddress": "redis.example.internal:6379", "redisPasswordSecret": {"name": "redis-pw", "key": "password"}},
    "pools": [{"name": "cpu", "kind": "cpu", "replicas": 1, "keda": {"enabled": True, "minReplicaCount": 0}},
              {"name": "hooks", "kind": "webhooks", "replicas": 1, "keda": {"enabled": True}}],
    "models": {"persistence": {"enabled": True, "storageClass": "nfs"}, "buildDemo": {"enabled": False}},
    "secrets": {"webhookSecret": "whsec_x", "flowerBasicAuth": "admin:pw", "apiKey": "ik_x"},
    "api": {"hpa": {"enabled": False}, "replicas": 3},
    "auth": "required",
}


def render(helm, values: dict | None = None) -> list[dict]:
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values or {})
        manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def gpu_values(helm) -> dict:
    return helm.values_from_yaml((CHART / "values-gpu.yaml").read_text())


@pytest.fixture(scope="module", params=["default", "gpu", "external-redis"])
def rendered(request, helm):
    values = {"default": {}, "gpu": gpu_values(helm), "external-redis": EXTERNAL}[request.param]
    return request.param, render(helm, values)


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_every_manifest_is_valid_against_the_kubernetes_and_keda_schemas(rendered, kubernetes_validate, jsonschema):
    _, docs = rendered
    keda = load_json("keda.schema.json")
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            jsonschema.validate(doc, keda)
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']} (k8s {version}): {exc.message} "
                                     f"at {list(exc.path)}") from None


def test_selectors_services_and_scalers_point_at_what_the_chart_renders(rendered):
    _, docs = rendered
    deployments = by_kind(docs, "Deployment")
    for name, dep in deployments.items():
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items(), name
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in deployments.values()]
    for name, svc in by_kind(docs, "Service").items():
        assert sum(svc["spec"]["selector"].items() <= labels.items() for labels in pods) == 1, name
    for name, pdb in by_kind(docs, "PodDisruptionBudget").items():
        assert any(pdb["spec"]["selector"]["matchLabels"].items() <= labels.items() for labels in pods), name
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for name, scaler in by_kind(docs, kind).items():
            target = deployments[scaler["spec"]["scaleTargetRef"]["name"]]
            assert "replicas" not in target["spec"], f"{name}: the autoscaler owns the replica count"
    for dep in deployments.values():
        spec = dep["spec"]["template"]["spec"]
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for container in spec["containers"] + spec.get("initContainers", []):
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes


def test_api_probes_health_and_ready_and_the_api_image_is_not_a_worker_image(rendered):
    _, docs = rendered
    [api] = [d for n, d in by_kind(docs, "Deployment").items() if n.endswith("-api")]
    container = api["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"  # never Redis
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["image"].startswith("inferno-jobs-api:")
    assert container["command"][:2] == ["inferno-jobs", "api"]
    env = {e["name"]: e for e in container["env"]}
    assert env["API_HOST"]["value"] == "0.0.0.0" and "REDIS_URL" in env and env["MODEL_DIR"]["value"] == "/models"


def test_default_values_run_a_cpu_and_a_webhooks_pool_on_the_release_redis(helm):
    docs = render(helm)
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {f"{RELEASE}-inferno-jobs-{c}" for c in ("api", "worker-cpu", "worker-webhooks", "flower")}
    cpu = deployments[f"{RELEASE}-inferno-jobs-worker-cpu"]["spec"]["template"]["spec"]
    assert cpu["containers"][0]["command"] == ["inferno-jobs", "worker", "--pool", "cpu", "--concurrency", "2"]
    assert cpu["initContainers"][0]["command"][:3] == ["inferno-jobs", "models", "build-demo"]
    env = {e["name"]: e for e in cpu["containers"][0]["env"]}
    assert env["REDIS_URL"]["value"] == f"redis://:$(REDIS_PASSWORD)@{RELEASE}-redis-master.{NAMESPACE}.svc:6379/0"
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": f"{RELEASE}-redis", "key": "redis-password"}
    assert not by_kind(docs, "ScaledObject")
    assert set(by_kind(docs, "HorizontalPodAutoscaler")) == {f"{RELEASE}-inferno-jobs-api"}


def test_gpu_values_reserve_gpus_and_scale_each_pool_on_its_own_queues(helm):
    docs = render(helm, gpu_values(helm))
    gpu = by_kind(docs, "Deployment")[f"{RELEASE}-inferno-jobs-worker-gpu"]["spec"]["template"]["spec"]
    container = gpu["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].startswith("inferno-jobs-gpu:")
    assert container["command"] == ["inferno-jobs", "worker", "--pool", "gpu", "--gpus", "0"]
    assert gpu["tolerations"][0]["key"] == "nvidia.com/gpu" and gpu["nodeSelector"]
    scalers = by_kind(docs, "ScaledObject")
    lists = {name.rsplit("-", 1)[1]: [t["metadata"]["listName"] for t in s["spec"]["triggers"]]
             for name, s in scalers.items()}
    assert lists == {"cpu": ["inferno.cpu.high", "inferno.cpu.normal", "inferno.cpu.low"],
                     "gpu": ["inferno.gpu.high", "inferno.gpu.normal", "inferno.gpu.low"]}
    assert scalers[f"{RELEASE}-inferno-jobs-worker-gpu"]["spec"]["minReplicaCount"] == 0
    [auth] = by_kind(docs, "TriggerAuthentication").values()
    assert auth["spec"]["secretTargetRef"][0] == {"parameter": "password", "name": f"{RELEASE}-redis", "key": "redis-password"}
    assert by_kind(docs, "PersistentVolumeClaim")


def test_two_gpus_per_pod_start_one_worker_process_per_gpu(helm):
    values = gpu_values(helm)
    values["pools"][1]["gpus"] = 2
    gpu = by_kind(render(helm, values), "Deployment")[f"{RELEASE}-inferno-jobs-worker-gpu"]
    container = gpu["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-2:] == ["--gpus", "0,1"] and container["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_external_redis_and_secrets(helm):
    docs = render(helm, EXTERNAL)
    [secret] = by_kind(docs, "Secret").values()
    assert secret["stringData"] == {"redis-url": EXTERNAL["externalRedis"]["url"], "webhook-secret": "whsec_x",
                                    "flower-basic-auth": "admin:pw", "api-key": "ik_x"}
    api = by_kind(docs, "Deployment")[f"{RELEASE}-inferno-jobs-api"]
    env = {e["name"]: e for e in api["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "redis-url" and "REDIS_PASSWORD" not in env
    assert api["spec"]["replicas"] == 3
    triggers = [t for s in by_kind(docs, "ScaledObject").values() for t in s["spec"]["triggers"]]
    assert {t["metadata"]["address"] for t in triggers} == {"redis.example.internal:6379"}
    assert "inferno.webhooks" in {t["metadata"]["listName"] for t in triggers}


def test_an_existing_secret_replaces_the_charts_own(helm):
    docs = render(helm, {"secrets": {"existingSecret": "mine"}})
    assert not by_kind(docs, "Secret")
    api = by_kind(docs, "Deployment")[f"{RELEASE}-inferno-jobs-api"]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in api["spec"]["template"]["spec"]["containers"][0]["env"]
            if "valueFrom" in e and e["valueFrom"]["secretKeyRef"]["key"] != "redis-password"}
    assert refs == {"mine"}


@pytest.mark.parametrize("values, complaint", [
    ({"pools": [{"name": "g", "kind": "gpu"}]}, "gpus"),
    ({"pools": [{"name": "x", "kind": "tpu"}]}, "kind"),
    ({"auth": "sometimes"}, "auth"),
    ({"keda": {"redisAddress": "redis://host:6379"}}, "redisAddress"),
    ({"api": {"replica": 2}}, "replica"),
])
def test_the_values_schema_rejects_mistakes(helm, values, complaint):
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmError) as info:
        chart.validate_schema(values)
    assert complaint in str(info.value) or "allOf" in str(info.value)


def test_missing_external_redis_url_fails_the_render(helm):
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmError, match="externalRedis.url"):
        chart.render({"redis": {"enabled": False}}, name=RELEASE, namespace=NAMESPACE)


def test_helm_lint_finds_nothing_but_the_unfetched_redis_subchart(helm):
    report = helm.lint(str(CHART), strict=True, kube_version="v1.29.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert [m["error"] for m in problems] == ["chart directory is missing these dependencies: redis"], problems

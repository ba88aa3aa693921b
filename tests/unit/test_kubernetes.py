"""The Kubernetes manifests (deploy/kubernetes): each overlay renders with `kubectl kustomize`, every
object validates against the Kubernetes schemas offline, and what the manifests say about ports,
probes and grace periods matches the services' own settings, so the two cannot drift apart."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from llmserve.model_worker.settings import WorkerSettings
from llmserve.monitor.settings import MonitorSettings
from llmserve.registry.settings import RegistrySettings
from llmserve.router import __main__ as router_main
from llmserve.router.settings import RouterSettings
from llmserve.scheduler.settings import SchedulerSettings
from tests.helpers.system_tools import debian_tool

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.34.0"
# Each service, its settings, and the setting whose address serves /healthz and /readyz.
SERVICES = {
    "router": (RouterSettings, lambda s: s.http_addr),
    "scheduler": (SchedulerSettings, lambda s: s.metrics_addr),
    "registry": (RegistrySettings, lambda s: s.metrics_addr),
    "monitor": (MonitorSettings, lambda s: s.http_addr),
    "model-worker": (WorkerSettings, lambda s: s.metrics_addr),
}


@pytest.fixture(scope="module", params=("cpu", "gpu"))
def overlay(request) -> tuple[str, list[dict]]:
    kubectl = debian_tool("kubectl", "kubernetes-client")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "deploy" / "kubernetes" / "overlays" / request.param)], capture_output=True, text=True, timeout=60
    )
    assert rendered.returncode == 0, rendered.stderr
    return request.param, [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def objects(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def pod_template(docs: list[dict], name: str) -> dict:
    workload = {**objects(docs, "Deployment"), **objects(docs, "StatefulSet")}[name]
    return workload["spec"]["template"]


def environment(docs: list[dict], container: dict) -> dict[str, str]:
    """The container's environment as the service sees it: its ConfigMaps, then its own variables."""
    env: dict[str, str] = {}
    config_maps = objects(docs, "ConfigMap")
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    env.update({item["name"]: item["value"] for item in container.get("env", []) if "value" in item})
    return env


def test_every_object_validates_against_the_kubernetes_schemas(overlay):
    _, docs = overlay
    assert len(docs) > 30
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a custom resource: checked in test_workers_scale_on_the_monitors_signal
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert doc["metadata"].get("namespace", "llmserve") == "llmserve"


def test_every_service_is_probed_on_the_address_its_settings_serve(overlay):
    _, docs = overlay
    for name, (settings_class, probe_addr) in SERVICES.items():
        template = pod_template(docs, name)
        (container,) = template["spec"]["containers"]
        settings = settings_class.from_env(environment(docs, container))
        port = int(probe_addr(settings).rsplit(":", 1)[1])
        assert probe_addr(settings).startswith("0.0.0.0:"), f"{name} listens on loopback only"
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}, name
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}, name
        assert port in {p["containerPort"] for p in container["ports"]}, name
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], name
        # A Service's named target port is one the container declares.
        for service in objects(docs, "Service").values():
            if service["spec"]["selector"].get("app.kubernetes.io/name") == name:
                names = {p["name"] for p in container["ports"]}
                assert {p["targetPort"] for p in service["spec"]["ports"]} <= names, name


def test_grace_periods_cover_the_drains(overlay):
    _, docs = overlay
    worker = pod_template(docs, "model-worker")
    settings = WorkerSettings.from_env(environment(docs, worker["spec"]["containers"][0]))
    assert worker["spec"]["terminationGracePeriodSeconds"] >= settings.drain_grace_s + 10
    router = pod_template(docs, "router")
    pre_stop = int(router["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert router["spec"]["terminationGracePeriodSeconds"] >= pre_stop + router_main.SHUTDOWN_GRACE_S + 5


def test_the_gpu_overlay_gives_each_worker_one_gpu(overlay):
    name, docs = overlay
    (container,) = pod_template(docs, "model-worker")["spec"]["containers"]
    env = environment(docs, container)
    if name == "gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert env["LLMSERVE_WORKER_DEVICE"] == "cuda" and env["LLMSERVE_WORKER_DTYPE"] == "bfloat16"
    else:
        assert "nvidia.com/gpu" not in container["resources"]["limits"]
        assert env["LLMSERVE_WORKER_DEVICE"] == "cpu"


def test_every_workload_has_a_disruption_budget_and_a_network_policy(overlay):
    _, docs = overlay
    budgets = objects(docs, "PodDisruptionBudget").values()
    policies = objects(docs, "NetworkPolicy")
    assert policies["default-deny-ingress"]["spec"]["podSelector"] == {}

    def selects(selector: dict, labels: dict) -> bool:
        matched = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
        for expression in selector.get("matchExpressions", []):
            matched = matched and expression["operator"] == "In" and labels.get(expression["key"]) in expression["values"]
        return matched and bool(selector)

    for name in [*objects(docs, "Deployment"), *objects(docs, "StatefulSet")]:
        labels = pod_template(docs, name)["metadata"]["labels"]
        assert any(selects(b["spec"]["selector"], labels) for b in budgets), f"{name} has no PodDisruptionBudget"
        assert any(selects(p["spec"]["podSelector"], labels) for p in policies.values()), f"{name} receives nothing"


def test_the_cluster_services_are_replicated(overlay):
    _, docs = overlay
    config = objects(docs, "ConfigMap")["llmserve-config"]["data"]
    nats = objects(docs, "StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3 and int(config["LLMSERVE_NATS_JS_REPLICAS"]) == 3
    assert len(config["LLMSERVE_NATS_URL"].split(",")) == 3
    assert "jetstream" in objects(docs, "ConfigMap")["nats-config"]["data"]["nats.conf"]
    assert objects(docs, "StatefulSet")["redis-sentinel"]["spec"]["replicas"] == 3
    assert len(config["LLMSERVE_REDIS_SENTINELS"].split(",")) == 3
    registry = pod_template(docs, "registry")["spec"]["containers"][0]
    assert RegistrySettings.from_env(environment(docs, registry)).wait_replicas == 1
    claim = objects(docs, "PersistentVolumeClaim")["llmserve-models"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_workers_scale_on_the_monitors_signal(overlay):
    _, docs = overlay
    (scaled,) = objects(docs, "ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] == "model-worker"
    (trigger,) = scaled["spec"]["triggers"]
    monitor_port = int(MonitorSettings.from_env(environment(docs, pod_template(docs, "monitor")["spec"]["containers"][0])).http_addr.rsplit(":", 1)[1])
    assert trigger["type"] == "metrics-api"
    assert trigger["metadata"]["url"] == f"http://monitor.llmserve.svc:{monitor_port}/status/scaling"
    assert trigger["metadata"]["valueLocation"] == f"models.{WorkerSettings().common.default_model}.desired_workers"

"""Every metric a service serves is in docs/ARCHITECTURE.md's metrics table, with its labels, and
every metric the table names is served."""

import re
from pathlib import Path

import prometheus_client
import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _documented() -> dict[str, tuple[str, ...]]:
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = doc.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    found = {}
    for name, labels in re.findall(r"^\| `(llmserve_\w+)(?:\{([\w,]*)\})?` \|", section, re.M):
        found[name] = tuple(sorted(filter(None, labels.split(","))))
    return found


def _served() -> dict[str, tuple[str, ...]]:
    # Importing a service's metrics modules registers its metrics (none of these imports torch).
    import llmserve.model_worker.metrics  # noqa: F401
    import llmserve.registry.grpc_api  # noqa: F401
    import llmserve.router.metrics  # noqa: F401
    import llmserve.scheduler.metrics  # noqa: F401
    from llmserve.monitor.status import ClusterMetrics

    collectors = [*prometheus_client.REGISTRY._collector_to_names, *ClusterMetrics().registry._collector_to_names]
    served = {}
    for metric in collectors:
        name = getattr(metric, "_name", "")
        if not name.startswith("llmserve_"):
            continue
        if metric._type == "counter":
            name += "_total"
        served[name] = tuple(sorted(metric._labelnames))
    return served


def test_every_served_metric_is_documented_with_its_labels_and_back():
    documented, served = _documented(), _served()
    assert set(served) - set(documented) == set(), "served but not in the metrics table"
    assert set(documented) - set(served) == set(), "in the metrics table but not served"
    for name, labels in served.items():
        assert documented[name] == labels, f"{name}: labels {labels} served, {documented[name]} documented"


def test_tenant_labels_are_bounded():
    from llmserve.router import metrics

    labels = {metrics.tenant_label(f"tenant-{i}") for i in range(metrics.TENANT_LABEL_CAP * 3)}
    assert len(labels) <= metrics.TENANT_LABEL_CAP + 1
    assert metrics.OTHER_TENANTS in labels
    assert metrics.tenant_label("tenant-0") == "tenant-0"  # a tenant seen early keeps its name

"""The provisioned Grafana dashboard: well-formed, on the provisioned data source, and every metric its
queries name exists (a served metric from the table in docs/ARCHITECTURE.md, a recording rule of
deploy/prometheus, or a node-exporter metric). tests/e2e/test_prometheus.py runs every query on a
real Prometheus."""

import json
import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "llmserve.json"
NODE_EXPORTER = {"node_filesystem_avail_bytes", "node_filesystem_size_bytes", "node_network_receive_bytes_total", "node_network_transmit_bytes_total"}
# What dashboards need, as issue 18 lists it: a panel must show each.
REQUIRED = ("generated_tokens", "ttft", "inter_token_latency", "queue_depth", "kv_cache_usage", "migrations", "request",
            "cpu_percent", "resident_memory", "gpu_utilization", "node_filesystem", "node_network")


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]


def known_metrics() -> set[str]:
    table = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    served = set(re.findall(r"^\| `(llmserve_[a-z_]+)", table, re.M))
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules" / "recording.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"]}
    return served | recorded | NODE_EXPORTER


def test_the_dashboard_is_well_formed_and_uses_the_provisioned_data_source():
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and board["panels"]
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:
        assert p["type"] == "timeseries" and p["title"] and set(p["gridPos"]) == {"h", "w", "x", "y"}
        assert p["datasource"]["uid"] == datasource["uid"] and p["targets"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
    text = " ".join(dashboard_exprs())
    assert all(word in text for word in REQUIRED), [w for w in REQUIRED if w not in text]


def test_every_metric_a_query_names_exists():
    known = known_metrics()
    for expr in dashboard_exprs():
        for name in re.findall(r"\b((?:llmserve_|node_|model:|model_priority:)[A-Za-z0-9_:]*)", expr):
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert name in known or base in known, f"{name} (in {expr!r}) is neither served, recorded nor node-exporter's"

"""A real Prometheus (Debian's package) scrapes a running cluster with deploy/prometheus's rules; the
recording rules' results are read back over its HTTP API."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from llmserve.cli import infra
from tests.helpers.system_tools import debian_tool

pytestmark = pytest.mark.e2e

RULES = Path(__file__).parents[2] / "deploy" / "prometheus" / "rules"
MODEL = "SmolLM2-135M-Instruct"


def _config(cluster) -> dict:
    """deploy/prometheus/prometheus.yml with the test cluster's addresses, scraped every second."""
    config = yaml.safe_load((RULES.parent / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(p) for p in sorted(RULES.glob("*.yml"))]
    targets = {
        "llmserve-router": [f"127.0.0.1:{cluster.http_port}"],
        "llmserve-scheduler": [f"127.0.0.1:{cluster.scheduler_metrics_port}"],
        "llmserve-worker": [f"127.0.0.1:{p}" for p in cluster.worker_metrics_ports],
        "llmserve-registry": [f"127.0.0.1:{cluster.registry_metrics_port}"],
        "llmserve-monitor": [f"127.0.0.1:{cluster.monitor_port}"],
    }
    config["scrape_configs"] = [
        {"job_name": job, "static_configs": [{"targets": addrs}]} for job, addrs in targets.items()
    ]  # no node-exporter in the test: the node job is left out
    return config


def _query(url: str, promql: str) -> list[dict]:
    body = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_every_service_and_computes_the_recording_rules(real_cluster, tmp_path):
    binary = debian_tool("prometheus", "prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(_config(real_cluster)))
    port = infra.free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        def all_up() -> bool:
            up = _query(url, 'up{job=~"llmserve-.*"}')
            return len(up) == 5 and all(r["value"][1] == "1" for r in up)

        real_cluster.until(ready, 60, "Prometheus ready")

        real_cluster.until(all_up, 60, "Prometheus scraping all five services")
        for i in range(4):
            r = httpx.post(
                f"{real_cluster.http_url}/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": f"Count to {i + 3}."}], "max_tokens": 8, "temperature": 0},
                timeout=60,
            )
            assert r.status_code == 200

        def tokens_per_second() -> bool:
            found = _query(url, f'model:llmserve_generated_tokens:rate1m{{model="{MODEL}"}}')
            return bool(found) and float(found[0]["value"][1]) > 0

        real_cluster.until(tokens_per_second, 60, "the tokens/s recording rule above 0")
        p50 = _query(url, f'model:llmserve_ttft_seconds:p50_5m{{model="{MODEL}"}}')
        assert p50 and 0 < float(p50[0]["value"][1]) < 30
        errors = _query(url, f'model:llmserve_request_errors:ratio_rate5m{{model="{MODEL}"}}')
        assert errors and float(errors[0]["value"][1]) == 0
        assert _query(url, 'count(llmserve_worker_kv_cache_usage_ratio)')[0]["value"][1] == str(len(real_cluster.worker_metrics_ports))
        # The rules loaded and evaluate without errors.
        groups = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        assert {g["name"] for g in groups} == {"llmserve-recording", "llmserve-alerts"}
        assert all(rule["health"] == "ok" for g in groups for rule in g["rules"]), [
            (rule["name"], rule.get("lastError")) for g in groups for rule in g["rules"] if rule["health"] != "ok"
        ]
        # Every query of the Grafana dashboard parses and runs; the cluster's own panels have data.
        from tests.unit.test_grafana import dashboard_exprs

        for expr in dashboard_exprs():
            result = _query(url, expr.replace("$model", ".*"))
            # No data is right for what this cluster has none of: node-exporter, GPUs, migrations,
            # failed requests, and queued jobs (a scheduler reports a queue once a job has waited in it).
            if not any(word in expr for word in ("node_", "gpu", "migrations", "outcome!=", "queue_depth")):
                assert result, f"no data for {expr}"
        firing = [a for a in httpx.get(f"{url}/api/v1/alerts", timeout=10).json()["data"]["alerts"] if a["state"] == "firing"]
        assert firing == []
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()

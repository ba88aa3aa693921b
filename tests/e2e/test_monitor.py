"""The monitor's cluster view: JSON status, web page, Prometheus metrics and `llmserve status`."""

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmserve.monitor import status as names

pytestmark = pytest.mark.e2e


def test_status_lists_every_instance_and_the_model(real_cluster):
    view = httpx.get(f"{real_cluster.monitor_url}/status", timeout=10).json()
    kinds = {i["kind"] for i in view["instances"] if i["live"]}
    (scheduler,) = [i for i in view["instances"] if i["kind"] == "scheduler"]
    assert scheduler["queued_jobs"] == 0
    assert {"router", "scheduler", "worker", "monitor"} <= kinds
    (model,) = view["models"]
    assert model["model"] == "SmolLM2-135M-Instruct" and model["workers"] == 1 and model["slots_total"] >= 1
    # The numeric mode, from the worker's heartbeat: int8 on a CPU by default.
    (worker,) = [i for i in view["instances"] if i["kind"] == "worker"]
    assert worker["numerics"] == "int8" and model["numerics"] == ["int8"]
    page = httpx.get(f"{real_cluster.monitor_url}/", timeout=10).text
    assert "llmserve cluster" in page and "SmolLM2-135M-Instruct" in page


def test_metrics_parse_and_hold_the_documented_names(real_cluster):
    text = httpx.get(f"{real_cluster.monitor_url}/metrics", timeout=10).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (names.INSTANCES, names.WORKER_SLOTS, names.WORKER_SLOTS_BUSY, names.INSTANCE_RSS, names.INSTANCE_CPU):
        assert name in families, name
    workers = [s for s in families[names.INSTANCES].samples if s.labels["kind"] == "worker"]
    assert sum(s.value for s in workers) == 1


def test_cli_status_prints_the_tables(real_cluster):
    cli = Path(sys.executable).parent / "llmserve"
    out = subprocess.run([str(cli), "status", "--monitor", real_cluster.monitor_url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "SmolLM2-135M-Instruct" in out.stdout and "worker" in out.stdout and "ready" in out.stdout
    assert "int8" in out.stdout


def test_scheduler_and_worker_metrics(real_cluster):
    import openai

    client = openai.OpenAI(base_url=f"{real_cluster.http_url}/v1", api_key="unused", max_retries=0)
    client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    scheduler = httpx.get(f"http://127.0.0.1:{real_cluster.scheduler_metrics_port}/metrics", timeout=10).text
    families = {f.name: f for f in text_string_to_metric_families(scheduler)}
    queued = [s for s in families["llmserve_scheduler_submissions"].samples if s.labels.get("outcome") == "queued"]
    assert queued and queued[0].value >= 1
    assert "llmserve_scheduler_queued_jobs" in families
    worker = httpx.get(f"http://127.0.0.1:{real_cluster.worker_metrics_ports[0]}/metrics", timeout=10).text
    names_found = {f.name for f in text_string_to_metric_families(worker)}
    assert {"llmserve_worker_jobs", "llmserve_worker_queue_time_seconds", "llmserve_worker_generated_tokens",
            "llmserve_worker_slots", "llmserve_worker_slots_busy", "llmserve_worker_kv_reserved_tokens"} <= names_found
    (mode,) = [s for f in text_string_to_metric_families(worker) if f.name == "llmserve_worker_numerics_info" for s in f.samples if s.value == 1]
    assert mode.labels["numerics"] == "int8"


def test_probe_of_the_real_model_passes(real_cluster):
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        probes = httpx.get(f"{real_cluster.monitor_url}/status", timeout=10).json()["probes"]
        if probes:
            (probe,) = probes
            assert probe["ok"], probe
            assert "Paris" in probe["detail"] and probe["latency_s"] > 0
            return
        time.sleep(0.5)
    raise AssertionError("no probe ran within 60 s")


def test_registry_serves_versions_and_metrics(real_cluster):
    import grpc

    from llmserve.v1 import registry_pb2, registry_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{real_cluster.registry_port}") as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        record = stub.GetVersion(registry_pb2.GetVersionRequest(name="SmolLM2-135M-Instruct", alias="stable"), timeout=10)
        assert record.version == 1 and "stable" in record.aliases and len(record.sha256) == 64
        with pytest.raises(grpc.RpcError) as err:
            stub.GetVersion(registry_pb2.GetVersionRequest(name="nope", alias="stable"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    text = httpx.get(f"http://127.0.0.1:{real_cluster.registry_metrics_port}/metrics", timeout=10).text
    lookups = {f.name: f for f in text_string_to_metric_families(text)}["llmserve_registry_lookups"]
    assert sum(s.value for s in lookups.samples if s.name.endswith("_total")) >= 2


def _chart_history_filled(real_cluster) -> bool:
    """True once the history has a point with tokens/s above 0 and one with a measured TTFT."""
    points = httpx.get(f"{real_cluster.monitor_url}/status/history", timeout=10).json()["points"]
    models = [m for p in points for m in p["models"].values()]
    return any((m["tokens_per_s"] or 0) > 0 for m in models) and any(m["ttft_p50_s"] is not None for m in models)


def test_the_status_page_draws_charts_of_the_last_minutes(real_cluster):
    import openai
    from selenium.webdriver.common.by import By

    from tests.helpers.browser import artifacts_dir, chrome, ensure_chromium
    from tests.helpers.system_tools import missing

    found = ensure_chromium()
    if isinstance(found, str):
        missing(found)
    client = openai.OpenAI(base_url=f"{real_cluster.http_url}/v1", api_key="unused", max_retries=0)
    for question in ("Hi", "Name a colour.", "What is 2+2?"):
        client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": question}], max_tokens=16)
    real_cluster.until(lambda: _chart_history_filled(real_cluster), 20, "the monitor's history shows no tokens/s and TTFT")

    driver = chrome(*found)
    try:
        driver.set_window_size(1400, 1100)
        driver.get(f"{real_cluster.monitor_url}/")
        (charts,) = driver.find_elements(By.CSS_SELECTOR, '.charts[data-model="SmolLM2-135M-Instruct"]')
        svgs = {svg.get_attribute("data-title"): svg for svg in charts.find_elements(By.CSS_SELECTOR, "svg.chart")}
        assert set(svgs) == {"tokens/s", "time to first token", "queued jobs", "busy slots"}
        for title in ("tokens/s", "busy slots"):
            lines = svgs[title].find_elements(By.CSS_SELECTOR, "polyline")
            assert lines and len(lines[0].get_attribute("points").split()) >= 2, title
            assert svgs[title].size["width"] > 100, title  # laid out, not just in the markup
        # TTFT is measured in the steps a request reached its first token: a line or a dot.
        assert svgs["time to first token"].find_elements(By.CSS_SELECTOR, "polyline, circle")
        driver.save_screenshot(str(artifacts_dir() / "monitor-status-page.png"))
    finally:
        driver.quit()


def test_cli_status_watch_redraws_with_sparklines(real_cluster):
    cli = Path(sys.executable).parent / "llmserve"
    out = subprocess.run(
        [str(cli), "status", "--monitor", real_cluster.monitor_url, "--watch", "0.2", "--count", "2"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\x1b[2J") == 2  # two redraws, each clearing the screen
    assert "SmolLM2-135M-Instruct" in out.stdout and "tokens/s" in out.stdout and "TTFT p95" in out.stdout

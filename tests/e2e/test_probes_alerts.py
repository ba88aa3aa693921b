"""Synthetic probes and alerts: a broken model version and a dead worker each raise an alert on the webhook."""

import json
import os
import signal
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import pytest

from tests.helpers.cluster import Cluster
from tests.helpers.registry import register

pytestmark = pytest.mark.e2e


class Webhook:
    """A local HTTP endpoint that records every alert POSTed to it."""

    def __init__(self) -> None:
        self.alerts: list[dict] = []
        received = self.alerts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, kind: str, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for alert in self.alerts:
                if alert["alert"] == kind:
                    return alert
            time.sleep(0.1)
        raise AssertionError(f"no {kind} alert within {timeout_s} s; got {self.alerts}")


@pytest.fixture
def broken_cluster(nats_srv, redis_srv, model_store, tiny, tmp_path):
    """A cluster serving the tiny random model, whose answers make no sense: its probes must fail."""
    prefix = "p" + uuid.uuid4().hex[:10]
    register(redis_srv.url, prefix, tiny)
    webhook = Webhook()
    cluster = Cluster(nats_srv.url, redis_srv.url, prefix, model_store, tmp_path / "logs", default_model=tiny.name)
    cluster.extra_env.update(
        LLMSERVE_WORKER_MODEL=tiny.name,
        LLMSERVE_MONITOR_PROBE_INTERVAL_S="1",
        LLMSERVE_MONITOR_PROBE_EXPECT="Paris",
        LLMSERVE_MONITOR_ALERT_WEBHOOK=webhook.url,
    )
    try:
        yield cluster.start(), webhook
    finally:
        cluster.stop()
        webhook.server.shutdown()


def test_broken_model_probe_and_dead_worker_raise_alerts(broken_cluster):
    cluster, webhook = broken_cluster
    alert = webhook.wait_for("probe_failed", 30)
    assert alert["model"] == "tiny-llama" and "failed" in alert["summary"]
    status = httpx.get(f"{cluster.monitor_url}/status", timeout=10).json()
    assert any(p["model"] == "tiny-llama" and not p["ok"] for p in status["probes"])
    # What Prometheus's LlmserveProbeFailing alert reads.
    metrics = httpx.get(f"{cluster.monitor_url}/metrics", timeout=10).text
    assert any(line.startswith("llmserve_probe_success{") and 'model="tiny-llama"' in line and line.endswith(" 0.0")
               for line in metrics.splitlines()), metrics

    worker = next(s for s in cluster.services if s.name.startswith("worker"))
    os.kill(worker.proc.pid, signal.SIGKILL)
    down = webhook.wait_for("instance_down", 10)
    assert down["instance"].startswith("worker-")

"""A /metrics endpoint for services without an HTTP API of their own (scheduler, worker, registry)."""

from __future__ import annotations

import structlog
from prometheus_client import start_http_server

log = structlog.get_logger()


def serve_metrics(addr: str) -> None:
    """Serves the default Prometheus registry on host:port from a background thread; empty addr: off."""
    if not addr:
        return
    host, _, port = addr.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1")
    log.info("metrics_listening", addr=f"{host}:{server.server_port}")

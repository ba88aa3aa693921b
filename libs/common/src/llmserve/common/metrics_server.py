"""/metrics, /healthz and /readyz for services without an HTTP API of their own (scheduler, worker, registry).

It starts before the service connects to anything, so that probes get an answer while it waits:
/healthz is 200 while the process runs, /readyz is 200 when the service is ready and 503 with the
reason when it is not (see startup.Readiness).
"""

from __future__ import annotations

import json
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import make_wsgi_app

from llmserve.common.startup import Readiness

log = structlog.get_logger()


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def _probes_app(readiness: Readiness):
    metrics = make_wsgi_app()

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            status, body = (200, {"status": "ok"}) if path == "/healthz" else readiness.probe()
            start_response("200 OK" if status == 200 else "503 Service Unavailable", [("Content-Type", "application/json")])
            return [json.dumps(body).encode()]
        return metrics(environ, start_response)

    return app


def serve_metrics(addr: str, readiness: Readiness) -> None:
    """Serves metrics and probes on host:port from a background thread; empty addr: off."""
    if not addr:
        return
    host, _, port = addr.rpartition(":")
    server = make_server(host or "127.0.0.1", int(port), _probes_app(readiness), _Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics_listening", addr=f"{host}:{server.server_port}")

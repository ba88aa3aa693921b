"""The cluster view: a JSON status, a small web page and Prometheus metrics, all from the heartbeat table."""

from __future__ import annotations

import html
import time

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from llmserve.common.heartbeat import KIND_NAMES
from llmserve.common.liveness import LivenessTable
from llmserve.common.startup import Readiness
from llmserve.monitor.alerts import Alerter
from llmserve.monitor.charts import history_section
from llmserve.monitor.history import LoadHistory
from llmserve.monitor.probes import Prober
from llmserve.monitor.scaling import demand, scaling_view
from llmserve.v1 import events_pb2

# Metric names the monitor exports (documented in docs/ARCHITECTURE.md).
INSTANCES = "llmserve_cluster_instances"
WORKER_SLOTS = "llmserve_cluster_worker_slots"
WORKER_SLOTS_BUSY = "llmserve_cluster_worker_slots_busy"
INSTANCE_RSS = "llmserve_instance_resident_memory_bytes"
INSTANCE_CPU = "llmserve_instance_cpu_percent"
DEATHS = "llmserve_cluster_instance_deaths_total"
GPU_UTIL = "llmserve_instance_gpu_utilization_percent"
GPU_MEMORY = "llmserve_instance_gpu_memory_used_bytes"
PROBE_SUCCESS = "llmserve_probe_success"
PROBE_LATENCY = "llmserve_probe_latency_seconds"
DESIRED_WORKERS = "llmserve_cluster_desired_workers"


class ClusterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.instances = Gauge(INSTANCES, "Live instances by kind and readiness.", ["kind", "ready"], registry=self.registry)
        self.slots = Gauge(WORKER_SLOTS, "Sequences the live workers of a model version can run.", ["model", "version"], registry=self.registry)
        self.busy = Gauge(WORKER_SLOTS_BUSY, "Sequences the live workers of a model version are running.", ["model", "version"], registry=self.registry)
        self.rss = Gauge(INSTANCE_RSS, "Resident memory of each live instance.", ["instance", "kind"], registry=self.registry)
        self.cpu = Gauge(INSTANCE_CPU, "CPU use of each live instance, percent of one core.", ["instance", "kind"], registry=self.registry)
        self.gpu_util = Gauge(GPU_UTIL, "GPU utilization of each live worker on a GPU.", ["instance"], registry=self.registry)
        self.gpu_memory = Gauge(GPU_MEMORY, "GPU memory in use by each live worker on a GPU.", ["instance"], registry=self.registry)
        self.deaths = Counter(DEATHS, "Instances declared dead, by kind.", ["kind"], registry=self.registry)
        self.probe_success = Gauge(
            PROBE_SUCCESS, "1 when the latest synthetic probe of a live model version passed, 0 when it failed.", ["model", "version"],
            registry=self.registry,
        )
        self.probe_latency = Gauge(PROBE_LATENCY, "Duration of the latest probe of a live model version.", ["model", "version"], registry=self.registry)
        self.desired_workers = Gauge(
            DESIRED_WORKERS, "Workers each model needs now, from busy slots, queued jobs and the queue's drain rate (scaling.py).", ["model"],
            registry=self.registry,
        )

    def count_death(self, kind: int) -> None:
        self.deaths.labels(kind=KIND_NAMES.get(kind, "unknown")).inc()

    def render(self, table: LivenessTable, prober: Prober | None = None) -> bytes:
        gauges = (self.instances, self.slots, self.busy, self.rss, self.cpu, self.gpu_util, self.gpu_memory, self.probe_success, self.probe_latency,
                  self.desired_workers)
        for gauge in gauges:
            gauge.clear()
        for model, entry in demand(table).items():
            self.desired_workers.labels(model=model).set(entry.desired_workers)
        live_versions = {(b.model, b.model_version) for b in table.live_workers()}
        for result in (prober.results.values() if prober is not None else ()):
            if (result.model, result.version) in live_versions:  # a version nobody serves any more is not probed
                self.probe_success.labels(model=result.model, version=str(result.version)).set(1 if result.ok else 0)
                self.probe_latency.labels(model=result.model, version=str(result.version)).set(result.latency_s)
        for beat in table.live():
            kind = KIND_NAMES.get(beat.kind, "unknown")
            self.instances.labels(kind=kind, ready=str(beat.ready).lower()).inc()
            self.rss.labels(instance=beat.instance_id, kind=kind).set(beat.rss_bytes)
            self.cpu.labels(instance=beat.instance_id, kind=kind).set(beat.cpu_percent)
            if beat.gpu_memory_total_bytes:
                self.gpu_util.labels(instance=beat.instance_id).set(beat.gpu_utilization_percent)
                self.gpu_memory.labels(instance=beat.instance_id).set(beat.gpu_memory_used_bytes)
            if beat.model:
                self.slots.labels(model=beat.model, version=str(beat.model_version)).inc(beat.slots_total)
                self.busy.labels(model=beat.model, version=str(beat.model_version)).inc(beat.slots_busy)
        return generate_latest(self.registry)


def status(table: LivenessTable) -> dict:
    now = time.monotonic()
    instances = []
    for state in sorted(table.instances.values(), key=lambda s: (s.beat.kind, s.beat.instance_id)):
        beat = state.beat
        instances.append(
            {
                "instance": beat.instance_id,
                "kind": KIND_NAMES.get(beat.kind, "unknown"),
                "live": now - state.seen_at < table.dead_after_s,
                "ready": beat.ready,
                "last_beat_s": round(now - state.seen_at, 2),
                "model": beat.model or None,
                "version": beat.model_version or None,
                "slots_total": beat.slots_total,
                "slots_busy": beat.slots_busy,
                "numerics": beat.numerics or None,
                "rss_mb": round(beat.rss_bytes / 2**20),
                "cpu_percent": round(beat.cpu_percent, 1),
                "gpu_utilization_percent": round(beat.gpu_utilization_percent, 1) if beat.gpu_memory_total_bytes else None,
                "gpu_memory_mb": round(beat.gpu_memory_used_bytes / 2**20) if beat.gpu_memory_total_bytes else None,
                "host": beat.host,
                "requests_total": beat.requests_total if beat.kind == events_pb2.INSTANCE_KIND_ROUTER else None,
                "queued_jobs": beat.queued_jobs if beat.kind == events_pb2.INSTANCE_KIND_SCHEDULER else None,
                "recent_ttft_p50_ms": round(beat.recent_ttft_p50_s * 1000, 1) if beat.kind == events_pb2.INSTANCE_KIND_ROUTER else None,
            }
        )
    models: dict[str, dict] = {}
    for item in instances:
        if item["kind"] == "worker" and item["live"]:
            key = f"{item['model']} v{item['version']}"
            entry = models.setdefault(key, {"model": item["model"], "version": item["version"], "workers": 0, "slots_total": 0, "slots_busy": 0, "numerics": []})
            entry["workers"] += 1
            entry["slots_total"] += item["slots_total"]
            entry["slots_busy"] += item["slots_busy"]
            if item["numerics"] and item["numerics"] not in entry["numerics"]:
                entry["numerics"].append(item["numerics"])
    return {"instances": instances, "models": list(models.values())}


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>llmserve cluster</title><style>body{{font-family:system-ui,sans-serif;margin:2rem}}table{{border-collapse:collapse}}
td,th{{padding:.3rem .7rem;border-bottom:1px solid #ddd;text-align:left}}.no{{color:#b00020}}
.charts{{display:flex;flex-wrap:wrap;gap:.8rem}}.note{{color:#777;font-size:.85rem}}
.probe-row{{display:flex;gap:.8rem;align-items:center;margin:.2rem 0}}.probe-row span{{min-width:16rem}}</style></head>
<body><h1>llmserve cluster</h1><h2>Models</h2><table><tr><th>model</th><th>version</th><th>workers</th><th>slots busy / total</th><th>numerics</th></tr>{models}</table>
<h2>Instances</h2><table><tr><th>instance</th><th>kind</th><th>state</th><th>model</th><th>slots</th><th>memory MB</th><th>CPU %</th><th>last beat</th></tr>{rows}</table>
{history}
<p><a href="/status">JSON</a> · <a href="/status/history">history (JSON)</a> · <a href="/metrics">metrics</a></p></body></html>"""


def page(view: dict, history: LoadHistory | None = None) -> str:
    models = "".join(
        f"<tr><td>{html.escape(str(m['model']))}</td><td>{m['version']}</td><td>{m['workers']}</td><td>{m['slots_busy']} / {m['slots_total']}</td><td>{html.escape(', '.join(m.get('numerics') or []))}</td></tr>"
        for m in view["models"]
    )
    rows = []
    for i in view["instances"]:
        state = "ready" if i["live"] and i["ready"] else ("draining" if i["live"] else "dead")
        css = "" if state == "ready" else ' class="no"'
        model = f"{i['model']} v{i['version']}" if i["model"] else ""
        slots = f"{i['slots_busy']} / {i['slots_total']}" if i["kind"] == "worker" else ""
        rows.append(
            f"<tr><td>{html.escape(i['instance'])}</td><td>{i['kind']}</td><td{css}>{state}</td><td>{html.escape(model)}</td>"
            f"<td>{slots}</td><td>{i['rss_mb']}</td><td>{i['cpu_percent']}</td><td>{i['last_beat_s']} s ago</td></tr>"
        )
    return _PAGE.format(models=models, rows="".join(rows), history=history_section(history) if history is not None else "")


def create_app(
    table: LivenessTable, metrics: ClusterMetrics, prober: Prober, alerter: Alerter, readiness: Readiness, history: LoadHistory
) -> FastAPI:
    app = FastAPI(title="llmserve monitor", docs_url=None, redoc_url=None)

    @app.get("/status")
    async def get_status() -> dict:
        view = status(table)
        view["probes"] = [
            {"model": r.model, "version": r.version, "ok": r.ok, "latency_s": round(r.latency_s, 3), "detail": r.detail, "at": r.at}
            for r in prober.results.values()
        ]
        view["alerts"] = alerter.recent[-20:]
        return view

    @app.get("/status/scaling")
    async def get_scaling() -> dict:
        return scaling_view(table)

    @app.get("/status/history")
    async def get_history() -> dict:
        return history.view()

    @app.get("/", response_class=HTMLResponse)
    async def get_page() -> str:
        return page(status(table), history)

    @app.get("/metrics")
    async def get_metrics() -> Response:
        return Response(metrics.render(table, prober), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        status, body = readiness.probe()
        return JSONResponse(body, status_code=status)

    return app

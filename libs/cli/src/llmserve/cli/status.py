"""`llmserve status` (the monitor's view of the cluster) and `llmserve models` without a subcommand
(the router's list of models), printed as tables."""

from __future__ import annotations

import json
import sys
import time
import urllib.request

import grpc

from llmserve.cli.registry_access import key_metadata
from llmserve.v1 import inference_pb2, inference_pb2_grpc


def list_models(addr: str) -> int:
    with grpc.insecure_channel(addr) as channel:
        try:
            response = inference_pb2_grpc.InferenceStub(channel).ListModels(inference_pb2.ListModelsRequest(), timeout=10, metadata=key_metadata())
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(f"{'MODEL':<32} {'STABLE':>6} {'VERSIONS':<16} {'WORKERS':>7}")
    for m in response.models:
        print(f"{m.name:<32} {m.stable_version:>6} {','.join(map(str, m.versions)):<16} {m.live_workers:>7}")
    return 0


def _fetch(monitor_url: str, path: str) -> dict:
    with urllib.request.urlopen(f"{monitor_url.rstrip('/')}{path}", timeout=5) as response:
        return json.load(response)


def cluster_status(monitor_url: str) -> int:
    """`llmserve status`: the monitor's view of models and instances, as tables."""
    try:
        view = _fetch(monitor_url, "/status")
    except OSError as exc:
        print(f"error: cannot reach the monitor at {monitor_url}: {exc}", file=sys.stderr)
        return 1
    print(f"{'MODEL':<32} {'VERSION':>7} {'WORKERS':>7} {'SLOTS BUSY/TOTAL':>17} {'NUMERICS':>9}")
    for m in view["models"]:
        numerics = ",".join(m.get("numerics") or []) or "-"
        print(f"{m['model']:<32} {m['version']:>7} {m['workers']:>7} {str(m['slots_busy']) + '/' + str(m['slots_total']):>17} {numerics:>9}")
    print()
    print(f"{'INSTANCE':<40} {'KIND':<10} {'STATE':<9} {'MEM MB':>7} {'CPU %':>6} {'LOAD':>7} {'TTFT P50':>9} {'LAST BEAT':>10}")
    for i in view["instances"]:
        state = "ready" if i["live"] and i["ready"] else ("not ready" if i["live"] else "dead")
        load = f"{i['slots_busy']}/{i['slots_total']}" if i["kind"] == "worker" else ""
        if i["kind"] == "scheduler":
            load = f"q {i.get('queued_jobs') or 0}"
        ttft = f"{i['recent_ttft_p50_ms']:.0f} ms" if i.get("recent_ttft_p50_ms") else ""
        print(
            f"{i['instance']:<40} {i['kind']:<10} {state:<9} {i['rss_mb']:>7} {i['cpu_percent']:>6} {load:>7} {ttft:>9} {i['last_beat_s']:>9}s"
        )
    for probe in view.get("probes", []):
        verdict = "ok" if probe["ok"] else "FAILING"
        print(f"probe {probe['model']} v{probe['version']}: {verdict} in {probe['latency_s']:.2f} s ({probe['detail']})")
    return 0


_BARS = "▁▂▃▄▅▆▇█"
# Points of history a sparkline shows (the newest; at the monitor's default 5 s step: 5 minutes).
_SPARK_POINTS = 60


def sparkline(values: list[float | None]) -> str:
    """One character per value, scaled to the largest; a space where nothing was measured."""
    peak = max((v for v in values if v is not None), default=0.0)
    if peak <= 0:
        return "".join(" " if v is None else _BARS[0] for v in values)
    return "".join(" " if v is None else _BARS[min(len(_BARS) - 1, int(v / peak * (len(_BARS) - 1) + 0.5))] for v in values)


def history_lines(history: dict) -> list[str]:
    """Per model: tokens/s, TTFT p95 and queued jobs over the last points, each with its latest value."""
    points = history.get("points", [])[-_SPARK_POINTS:]
    names = sorted({name for p in points for name in p["models"]})
    minutes = len(points) * history.get("step_s", 5) / 60
    lines = [f"last {minutes:.1f} min, one point per {history.get('step_s', 5):g} s"] if names else []
    for name in names:
        for field, label, unit, scale in (("tokens_per_s", "tokens/s", "", 1), ("ttft_p95_s", "TTFT p95", " ms", 1000),
                                          ("queued", "queued", "", 1)):
            values = [p["models"].get(name, {}).get(field) for p in points]
            last = next((v for v in reversed(values) if v is not None), None)
            shown = f"{last * scale:.0f}{unit}" if last is not None else "-"
            lines.append(f"{name:<32} {label:<9} {sparkline(values)} {shown}")
    return lines


def watch_status(monitor_url: str, every_s: float, count: int = 0) -> int:
    """`llmserve status --watch`: the tables and the sparklines, redrawn every `every_s` until Ctrl-C
    (or `count` redraws). A monitor that stops answering is said on screen, and watching goes on."""
    drawn = 0
    try:
        while True:
            print("\x1b[H\x1b[2J", end="")  # home and clear: each redraw replaces the last
            print(f"llmserve status — {time.strftime('%H:%M:%S')} — every {every_s:g} s, Ctrl-C to stop\n")
            if cluster_status(monitor_url) == 0:
                try:
                    lines = history_lines(_fetch(monitor_url, "/status/history"))
                except OSError:
                    lines = []
                if lines:
                    print()
                    print("\n".join(lines))
            sys.stdout.flush()
            drawn += 1
            if count and drawn >= count:
                return 0
            time.sleep(every_s)
    except KeyboardInterrupt:
        return 0

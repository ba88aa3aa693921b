"""`llmserve status` (the monitor's view of the cluster) and `llmserve models` without a subcommand
(the router's list of models), printed as tables."""

from __future__ import annotations

import json
import sys
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


def cluster_status(monitor_url: str) -> int:
    """`llmserve status`: the monitor's view of models and instances, as tables."""
    try:
        with urllib.request.urlopen(f"{monitor_url.rstrip('/')}/status", timeout=5) as response:
            view = json.load(response)
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

"""`make bench`: the whole llmserve stack against llama.cpp's own server, side by side in one run.

Both serve SmolLM2-135M-Instruct from the same GGUF file (llmserve publishes it into its model store,
llama-server reads it as it is), on this machine at the same time, over the same OpenAI REST load
script (bench/rest_load.py): greedy, 64 new tokens past end-of-sequence, chat-formatted questions,
concurrency 1, 4, 16 and 32. llama-server runs with `-t <cores> -np 32` (as many slots as llmserve's
worker has) and its own defaults otherwise.

Rounds interleave the two servers (the order alternates every round) at every concurrency; each
ratio is computed within a round and the median over rounds is reported, so the machine's drift
cancels out. Peak resident memory is sampled for the llmserve worker and for llama-server.
"""

from __future__ import annotations

import asyncio
import os
import statistics
from pathlib import Path

from bench import llama_server, rest_load, roofline, scenarios
from bench.measure import PeakRss, now, summarize
from bench.stack import running_stack
from llmserve.cli.infra import free_port

CONCURRENCY = (1, 4, 16, 32)
SLOTS = 32
# Context per llama-server slot: a question's ~45 tokens and 64 new ones fit with room to spare.
CTX_PER_SLOT = 256

TARGETS = {
    "tokens_per_s_ratio_c1": (">=", 0.5),
    "tokens_per_s_ratio_c4": (">=", 1.0),
    "tokens_per_s_ratio_c16": (">=", 1.5),
    "tokens_per_s_ratio_c32": (">=", 1.5),
    "ttft_p50_ratio_c1": ("<=", 3.0),
    "worker_peak_rss_mb": ("<=", 800),
}


def requests_at(concurrency: int) -> int:
    return max(concurrency, 4)


def _measure(name: str, url: str, pid: int, concurrency: int, new_tokens: int) -> dict:
    questions = scenarios.questions(requests_at(concurrency))
    with PeakRss(pid) as rss:
        started = now()
        timings = asyncio.run(rest_load.wave(url, questions, new_tokens, concurrency, rest_load.SERVER_FIELDS[name]))
        wall = now() - started
    return summarize(f"{name}, concurrency {concurrency}", timings, wall, rss.peak, concurrency=concurrency, server=name)


def run(store: Path, work: Path, rounds: int, new_tokens: int, log, worker_env: dict[str, str] | None = None) -> dict:
    from llmserve.common.modelstore import packaged_gguf

    binary = llama_server.ensure_binary(log)
    threads = os.cpu_count() or 2
    runs: dict[tuple[str, int], list[dict]] = {}
    log("starting the stack (NATS, Redis, scheduler, monitor, worker, router) ...")
    with running_stack(store, work, **(worker_env or {})) as (cluster, worker_pid):
        peer = None
        servers = [("llmserve", cluster.http_url, worker_pid)]
        if binary is None:
            log("peer skipped: llama-server is not available; measuring llmserve alone")
        else:
            peer = llama_server.LlamaServer(binary, packaged_gguf(), free_port(), threads, SLOTS, CTX_PER_SLOT, work / "llama-server.log")
            peer.wait_ready()
            servers.insert(0, ("llama-server", peer.url, peer.proc.pid))
        try:
            for name, url, _ in servers:  # warm-up: first requests, allocator, prompt templates
                asyncio.run(rest_load.wave(url, scenarios.questions(2), 4, 2, rest_load.SERVER_FIELDS[name]))
            for round_ in range(rounds):
                order = servers if round_ % 2 == 0 else servers[::-1]
                for c in CONCURRENCY:
                    for name, url, pid in order:
                        log(f"round {round_ + 1}/{rounds}: {name}, concurrency {c}")
                        runs.setdefault((name, c), []).append(_measure(name, url, pid, c, new_tokens))
        finally:
            if peer is not None:
                peer.stop()
    log("measuring the machine ...")
    report = {
        "suite": "peer",
        "model": "SmolLM2-135M-Instruct",
        "new_tokens": new_tokens,
        "rounds": rounds,
        "worker_env": worker_env or {},
        "peer": None if binary is None else {"binary": "llama-server", "source": llama_server.SDIST, "threads": threads, "parallel": SLOTS, "ctx_per_slot": CTX_PER_SLOT},
        "machine": {
            "cpus": os.cpu_count(),
            "bandwidth_gbs": round(roofline.memory_bandwidth_gbs(), 1),
            "matmul_gflops": round(roofline.matmul_gflops(), 1),
        },
        "scenarios": [_median(v) for v in runs.values()],
    }
    report["ratios"] = {} if binary is None else ratios(runs)
    report["ratios"]["worker_peak_rss_mb"] = max(r["peak_rss_mb"] for (name, _), rs in runs.items() if name == "llmserve" for r in rs)
    return report


def _median(rs: list[dict]) -> dict:
    ordered = sorted(rs, key=lambda r: r["tokens_per_s"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["runs_tokens_per_s"] = [r["tokens_per_s"] for r in rs]
    chosen["runs_ttft_p50_ms"] = [r["ttft_p50_ms"] for r in rs]
    chosen["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rs)
    return chosen


def ratios(runs: dict[tuple[str, int], list[dict]]) -> dict:
    """llmserve over llama-server, within each round, median over rounds."""
    out = {}
    for c in CONCURRENCY:
        ours, theirs = runs[("llmserve", c)], runs[("llama-server", c)]
        out[f"tokens_per_s_ratio_c{c}"] = round(statistics.median(a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(ours, theirs, strict=True)), 2)
    ours, theirs = runs[("llmserve", 1)], runs[("llama-server", 1)]
    out["ttft_p50_ratio_c1"] = round(statistics.median(a["ttft_p50_ms"] / b["ttft_p50_ms"] for a, b in zip(ours, theirs, strict=True)), 2)
    return out


def markdown(report: dict) -> str:
    rows = {(r["server"], r["concurrency"]): r for r in report["scenarios"]}
    lines = [
        "| concurrency | llama-server tokens/s | llmserve tokens/s | ratio (median of rounds) | llama-server TTFT p50 ms | llmserve TTFT p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for c in CONCURRENCY:
        peer, ours = rows.get(("llama-server", c), {}), rows.get(("llmserve", c), {})
        ratio = report["ratios"].get(f"tokens_per_s_ratio_c{c}", "")
        lines.append(
            f"| {c} | {peer.get('tokens_per_s', '-')} | {ours.get('tokens_per_s', '-')} | {ratio} | {peer.get('ttft_p50_ms', '-')} | {ours.get('ttft_p50_ms', '-')} |"
        )
    peer_rss = max((r["peak_rss_mb"] for r in report["scenarios"] if r["server"] == "llama-server"), default="-")
    lines.append(f"| peak RSS MB | {peer_rss} | worker {report['ratios']['worker_peak_rss_mb']} | | | |")
    m = report["machine"]
    lines += ["", f"Machine: {m['cpus']} CPUs, memory bandwidth {m['bandwidth_gbs']} GB/s, fp32 matmul {m['matmul_gflops']} GFLOP/s.", ""]
    lines += ["| target | value | goal | met |", "|---|---|---|---|"]
    for name, (op, goal) in TARGETS.items():
        value = report["ratios"].get(name)
        if value is None:
            lines.append(f"| {name} | - | {op} {goal} | peer skipped |")
            continue
        met = value >= goal if op == ">=" else value <= goal
        lines.append(f"| {name} | {value} | {op} {goal} | {'yes' if met else 'NO'} |")
    return "\n".join(lines) + "\n"

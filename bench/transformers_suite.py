"""`make bench SUITE=transformers`: throughput and latency of the engine and the whole stack, side by side with
transformers (float32, the engine as the worker loads it unless --numerics says otherwise).

On the real SmolLM2-135M-Instruct, every scenario uses the same prompts and generates 64 tokens per
request with end-of-sequence ignored. Writes bench/results/<date>.{json,md,png} and prints the table last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench import roofline, scenarios  # noqa: E402
from bench.stack import default_model_record, running_stack  # noqa: E402
from llmserve.common.config import default_model_store  # noqa: E402

CONCURRENCY = (1, 4, 16, 32)


def model_params(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in path.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                total += _prod(f.get_slice(key).get_shape())
    return total


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def requests_at(concurrency: int) -> int:
    return max(concurrency, 4)


RATIO_SCENARIOS = {"a", "b", "c1", "c16", "d1", "d16"}


def median_run(runs: list[dict]) -> dict:
    """The run with the median throughput, with every run's throughput kept for the record."""
    ordered = sorted(runs, key=lambda r: r["tokens_per_s"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["runs_tokens_per_s"] = [r["tokens_per_s"] for r in runs]
    chosen["runs_ttft_p50_ms"] = [r["ttft_p50_ms"] for r in runs]
    chosen["runs_ttft_ms"] = [r["ttft_ms"] for r in runs]
    return chosen


def in_fresh_process(spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "one_scenario.py"), json.dumps(spec)], capture_output=True, text=True, timeout=1800
    )
    if out.returncode != 0:
        raise RuntimeError(f"scenario {spec['kind']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ratios(rows: list[dict]) -> dict:
    """Each target's ratio, measured within each round and then the median over rounds.

    The scenarios compared run once per round, next to each other; pairing them by round cancels the
    machine's slow drift (other tenants' load comes and goes over minutes), which medians of each
    scenario taken separately do not.
    """
    by = {r["scenario"]: r for r in rows}
    a = by["(a) transformers generate, one at a time"]
    b = by["(b) transformers generate, static batch of 16"]
    e = {r["concurrency"]: r for r in rows if r["scenario"].startswith("(c)")}
    s = {r["concurrency"]: r for r in rows if r["scenario"].startswith("(d)")}

    def paired(num: dict, den: dict) -> float:
        return statistics.median(x / y for x, y in zip(num["runs_tokens_per_s"], den["runs_tokens_per_s"], strict=True))

    def ttft_difference(stack: dict, engine: dict) -> float:
        # Pairs are the same prompt in the same round: every request counts, not only each run's median.
        return statistics.median(
            x - y
            for stack_run, engine_run in zip(stack["runs_ttft_ms"], engine["runs_ttft_ms"], strict=True)
            for x, y in zip(stack_run, engine_run, strict=True)
        )

    return {
        "engine_c16_over_generate_alone": round(paired(e[16], a), 2),
        "engine_c16_over_static_batch16": round(paired(e[16], b), 2),
        "stack_c16_over_engine_c16": round(paired(s[16], e[16]), 2),
        "stack_ttft_c1_minus_engine_ms": round(ttft_difference(s[1], e[1]), 1),
    }


TARGETS = {
    "engine_c16_over_generate_alone": (">=", 6.0),
    "engine_c16_over_static_batch16": (">=", 1.0),
    "stack_c16_over_engine_c16": (">=", 0.9),
    "stack_ttft_c1_minus_engine_ms": ("<=", 15.0),
}


def markdown(report: dict) -> str:
    cols = ["scenario", "requests", "tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "peak_rss_mb", "runs_tokens_per_s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in report["scenarios"]:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in cols) + " |")
    m = report["machine"]
    lines += ["", f"Machine: {m['cpus']} CPUs, memory bandwidth {m['bandwidth_gbs']} GB/s, matmul {m['matmul_gflops']} GFLOP/s, torch threads {m['torch_threads']}.", ""]
    lines += ["| batch | roofline tokens/s |", "|---|---|"] + [f"| {b} | {v} |" for b, v in report["roofline_tokens_per_s"].items()]
    lines += ["", "| ratio | value | target | met |", "|---|---|---|---|"]
    for name, value in report["ratios"].items():
        op, target = TARGETS[name]
        met = value >= target if op == ">=" else value <= target
        lines.append(f"| {name} | {value} | {op} {target} | {'yes' if met else 'NO'} |")
    return "\n".join(lines) + "\n"


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["scenarios"]
    fig, ax = plt.subplots(figsize=(10, 5))
    names = [r["scenario"].replace(", ", "\n", 1) for r in rows]
    colors = ["#999" if r["scenario"][1] in "ab" else "#2f6fed" if r["scenario"][1] == "c" else "#e07b24" for r in rows]
    ax.bar(range(len(rows)), [r["tokens_per_s"] for r in rows], color=colors)
    ax.set_xticks(range(len(rows)), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("generated tokens/s")
    ax.set_title(f"SmolLM2-135M-Instruct, {report['new_tokens']} new tokens per request ({report['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each scenario the targets compare (median kept)")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    store = Path(os.environ.get("LLMSERVE_MODEL_STORE") or default_model_store())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        record = default_model_record(store, work, log)
        params = model_params(store / record.path)
        n = args.new_tokens
        base = {"path": str(store / record.path), "sha256": record.sha256, "new_tokens": n}

        log("measuring the machine ...")
        bandwidth, gflops = roofline.memory_bandwidth_gbs(), roofline.matmul_gflops()
        specs = {
            "a": {**base, "kind": "generate", "requests": 4},
            "b": {**base, "kind": "static", "requests": 16},
            # The same static batch on the worker's oneDNN linears: what of the engine's lead is the kernel.
            "b1": {**base, "kind": "static", "requests": 16, "cpu_linear": "onednn"},
            **{f"c{c}": {**base, "kind": "engine", "requests": requests_at(c), "concurrency": c, "max_running": 32} for c in CONCURRENCY},
        }
        runs: dict[str, list[dict]] = {key: [] for key in [*specs, *(f"d{c}" for c in CONCURRENCY)]}
        log("starting the stack (NATS, Redis, scheduler, monitor, worker, router) ...")
        with running_stack(store, work) as (cluster, worker_pid):
            addr = cluster.grpc_addr
            # The scenarios the targets compare run `repeats` times, interleaved (in-process and stack
            # alike), so that the machine's drift hits all of them; each reports its median run.
            for round_ in range(args.repeats):
                for key in runs:
                    if round_ > 0 and key not in RATIO_SCENARIOS:
                        continue
                    log(f"round {round_ + 1}/{args.repeats}: {key}")
                    if key in specs:
                        runs[key].append(in_fresh_process(specs[key]))
                    else:
                        c = int(key[1:])
                        questions = scenarios.questions(requests_at(c))
                        runs[key].append(scenarios.stack_through_grpc(addr, worker_pid, questions, n, c))
        rows = [median_run(v) for v in runs.values()]

    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": record.name,
        "new_tokens": n,
        "repeats": args.repeats,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "bandwidth_gbs": round(bandwidth, 1),
            "matmul_gflops": round(gflops, 1),
        },
        "params": params,
        "roofline_tokens_per_s": {
            b: round(roofline.decode_roofline(params, 4, b, bandwidth, gflops), 1) for b in (1, 4, 16, 32)
        },
        "scenarios": rows,
    }
    report["ratios"] = ratios(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / dt.date.today().isoformat()
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    stem.with_suffix(".md").write_text(table)
    chart(report, stem.with_suffix(".png"))
    log(f"wrote {stem}.json, .md and .png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

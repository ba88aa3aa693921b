"""`make bench`: llmserve against llama.cpp's own server (the default suite), or against transformers.

    python bench/run.py                     # peer suite: whole stack vs llama-server over OpenAI REST
    python bench/run.py --suite transformers [args]   # engine and stack vs transformers' generate
    python bench/run.py --suite constrained           # half the batch constrained to a JSON Schema vs none
    python bench/run.py --suite multiturn             # a conversation's second turn TTFT vs its first
    python bench/run.py --suite priority              # a high request's TTFT on a worker saturated by normal work

Writes bench/results/<date>-<suite>.{json,md} (the transformers suite also a .png) and prints the table last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=("peer", "transformers", "constrained", "multiturn", "priority"), default=os.environ.get("BENCH_SUITE", "peer"))
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (peer suite)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--worker-env", action="append", default=[], metavar="NAME=VALUE",
        help="a worker setting for the run (peer suite), e.g. LLMSERVE_WORKER_PROMPT_CACHE_MB=48; repeatable",
    )
    args, rest = parser.parse_known_args()
    if args.suite == "transformers":
        from bench import transformers_suite

        return transformers_suite.main([*rest, "--new-tokens", str(args.new_tokens), "--out", str(args.out)])

    if args.suite in ("constrained", "multiturn"):
        return _in_process_suite(args)
    if args.suite == "priority":
        from bench import priority_suite

        with tempfile.TemporaryDirectory() as tmp:
            report = priority_suite.run(_store(), Path(tmp), args.rounds, _log)
        return _write(args, args.suite, report, priority_suite.markdown)

    from bench import peer_suite

    worker_env = {}
    for item in args.worker_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("LLMSERVE_WORKER_"):
            parser.error(f"--worker-env takes LLMSERVE_WORKER_NAME=VALUE, got {item!r}")
        worker_env[name] = value
    with tempfile.TemporaryDirectory() as tmp:
        report = peer_suite.run(_store(), Path(tmp), args.rounds, args.new_tokens, _log, worker_env)
    return _write(args, "peer", report, peer_suite.markdown)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _store() -> Path:
    from llmserve.common.config import default_model_store

    return Path(os.environ.get("LLMSERVE_MODEL_STORE") or default_model_store())


def _write(args, name: str, report: dict, markdown) -> int:
    """bench/results/<date>-<name>.{json,md}, and the table printed last."""
    report["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{dt.date.today().isoformat()}-{name}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    stem.with_suffix(".md").write_text(table)
    _log(f"wrote {stem}.json and .md")
    print(table)
    return 0


def _in_process_suite(args) -> int:
    """The suites that run the engine in-process: constrained decoding, multi-turn TTFT."""
    from bench import constrained_suite, multiturn_suite

    with tempfile.TemporaryDirectory() as tmp:
        if args.suite == "constrained":
            report = constrained_suite.run(_store(), Path(tmp), args.rounds, args.new_tokens, _log)
            return _write(args, args.suite, report, constrained_suite.markdown)
        report = multiturn_suite.run(_store(), Path(tmp), args.rounds, _log)
        return _write(args, args.suite, report, multiturn_suite.markdown)


if __name__ == "__main__":
    sys.exit(main())

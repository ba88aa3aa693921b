"""The `llmserve` command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmserve", description="llmserve: serve LLMs over gRPC and REST.")
    sub = p.add_subparsers(dest="command", required=True)
    grpc_addr = os.environ.get("LLMSERVE_ROUTER_GRPC_ADDR", "127.0.0.1:50051")

    up = sub.add_parser("up", help="start a whole local cluster")
    up.add_argument("--grpc", default=grpc_addr, help="gRPC address of the router (default %(default)s)")
    up.add_argument(
        "--http",
        default=os.environ.get("LLMSERVE_ROUTER_HTTP_ADDR", "127.0.0.1:8000"),
        help="REST address of the router (default %(default)s)",
    )
    up.add_argument("--workers", type=int, default=1, help="model workers to start (default %(default)s)")
    up.add_argument("--schedulers", type=int, default=2,
                    help="schedulers to start (default %(default)s: requests keep being admitted while one restarts)")
    up.add_argument("--state-dir", default=".llmserve", help="where servers keep data and logs (default %(default)s)")
    up.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for readiness")

    chat = sub.add_parser("chat", help="ask a question and stream the answer")
    chat.add_argument("prompt")
    chat.add_argument("--addr", default=grpc_addr, help="router gRPC address (default %(default)s)")
    chat.add_argument("--model", default="", help="model name (default: the cluster's default)")
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0)
    chat.add_argument("--system", default=None, help="system message")

    status = sub.add_parser("status", help="models, instances and their load, from the monitor")
    status.add_argument(
        "--monitor",
        default="http://" + os.environ.get("LLMSERVE_MONITOR_HTTP_ADDR", "127.0.0.1:8001"),
        help="monitor URL (default %(default)s)",
    )
    status.add_argument(
        "--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
        help="redraw every SECONDS (default 2) with the last minutes' tokens/s, TTFT and queue as sparklines, until Ctrl-C",
    )
    status.add_argument("--count", type=int, default=0, help="with --watch: stop after this many redraws (default: never)")

    models = sub.add_parser("models", help="the model registry: list, show, publish, promote, canary, rollback, retire, ...")
    # With LLMSERVE_AUTH=required: the admin commands need LLMSERVE_API_KEY (an admin key).
    models.add_argument("--addr", default=grpc_addr, help="router gRPC address, for list (default %(default)s)")
    msub = models.add_subparsers(dest="action")
    msub.add_parser("list", help="models the cluster serves, with live workers (the default action)")
    from llmserve.cli.models import add_parsers

    add_parsers(msub)

    tenants = sub.add_parser("tenants", help="per-tenant limits (requests queued or running, highest priority)")
    from llmserve.cli import tenants as tenants_cli

    tenants_cli.add_parsers(tenants.add_subparsers(dest="action"))

    keys = sub.add_parser("keys", help="API keys: create (the secret is shown once), list, revoke, generate")
    from llmserve.cli import keys as keys_cli

    keys_cli.add_parsers(keys.add_subparsers(dest="action", required=True))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.command == "tenants" and args.action is None:
        args = _parser().parse_args([*argv, "list"])
    if args.command == "up":
        from llmserve.cli.up import up

        return up(Path(args.state_dir), args.grpc, args.http, args.workers, args.ready_timeout, args.schedulers)
    if args.command == "chat":
        from llmserve.cli.chat import chat

        return chat(args.addr, args.prompt, args.model, args.max_tokens, args.temperature, args.system)
    if args.command == "status":
        from llmserve.cli.status import cluster_status, watch_status

        if args.watch is not None:
            return watch_status(args.monitor, args.watch, args.count)
        return cluster_status(args.monitor)
    if args.command == "models":
        if args.action in (None, "list"):
            from llmserve.cli.status import list_models

            return list_models(args.addr)
        from llmserve.cli.models import run

        return run(args)
    if args.command == "tenants":
        from llmserve.cli import tenants

        return tenants.run(args)
    if args.command == "keys":
        from llmserve.cli import keys

        return keys.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `llmserve` command."""

from __future__ import annotations

import argparse
import asyncio
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

    models = sub.add_parser("models", help="the model registry: list, show, publish, promote, canary, rollback, retire, ...")
    models.add_argument("--addr", default=grpc_addr, help="router gRPC address, for list (default %(default)s)")
    msub = models.add_subparsers(dest="action")
    msub.add_parser("list", help="models the cluster serves, with live workers (the default action)")
    from llmserve.cli.models import add_parsers

    add_parsers(msub)

    tenants = sub.add_parser("tenants", help="per-tenant limits (requests queued or running, highest priority)")
    tsub = tenants.add_subparsers(dest="action")
    tsub.add_parser("list", help="tenants with their own limits (the default action)")
    tset = tsub.add_parser("set", help="override the scheduler's defaults for one tenant")
    tset.add_argument("tenant", help="the tenant (its x-tenant header)")
    tset.add_argument("--max-active", type=int, help="requests queued or running at once (0: no limit)")
    tset.add_argument("--max-priority", help="highest priority it may ask for: low, normal, high or critical")
    return p


async def _tenants(args: argparse.Namespace) -> int:
    import redis.asyncio as aioredis

    from llmserve.common.config import CommonSettings
    from llmserve.common.errors import ServiceError
    from llmserve.common.keys import RedisKeys
    from llmserve.common.tenants import priority_level, set_tenant_limits, tenant_limits
    from llmserve.v1 import common_pb2

    settings = CommonSettings.from_env()
    redis = aioredis.from_url(settings.redis_url)
    keys = RedisKeys(settings.key_prefix)
    try:
        if args.action == "set":
            priority = None
            if args.max_priority:
                try:
                    priority = priority_level(args.max_priority)
                except ValueError as exc:
                    print(f"error: --max-priority: {exc}", file=sys.stderr)
                    return 2
            await set_tenant_limits(redis, keys, args.tenant, max_active=args.max_active, max_priority=priority)
        limits = await tenant_limits(redis, keys)
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await redis.aclose()
    if not limits:
        print("no tenant has its own limits; every tenant gets the scheduler's defaults")
    for tenant, fields in limits.items():
        shown = dict(fields)
        if "max_priority" in shown:
            shown["max_priority"] = common_pb2.Priority.Name(shown["max_priority"]).removeprefix("PRIORITY_").lower()
        print(f"{tenant}: " + ", ".join(f"{k}={v}" for k, v in sorted(shown.items())))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "up":
        from llmserve.cli.up import up

        return up(Path(args.state_dir), args.grpc, args.http, args.workers, args.ready_timeout, args.schedulers)
    if args.command == "chat":
        from llmserve.cli.chat import chat

        return chat(args.addr, args.prompt, args.model, args.max_tokens, args.temperature, args.system)
    if args.command == "status":
        from llmserve.cli.status import cluster_status

        return cluster_status(args.monitor)
    if args.command == "models":
        if args.action in (None, "list"):
            from llmserve.cli.status import list_models

            return list_models(args.addr)
        from llmserve.cli.models import run

        return run(args)
    if args.command == "tenants":
        return asyncio.run(_tenants(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""`llmserve tenants ...`: per-tenant limits, through the Registry service."""

from __future__ import annotations

import argparse
import sys

from llmserve.cli.registry_access import ACTOR, add_access_arguments, registry_client, run_command
from llmserve.common.tenants import priority_level, priority_name
from llmserve.v1 import registry_pb2


def add_parsers(tsub: argparse._SubParsersAction) -> None:
    add_access_arguments(tsub.add_parser("list", help="tenants with their own limits (the default action)"))
    tset = tsub.add_parser("set", help="override the scheduler's defaults for one tenant")
    tset.add_argument("tenant", help="the tenant (its API keys' tenant, or its x-tenant header with auth off)")
    tset.add_argument("--max-active", type=int, help="requests queued or running at once (0: no limit)")
    tset.add_argument("--max-priority", help="highest priority it may ask for: low, normal, high or critical")
    add_access_arguments(tset)


def run(args: argparse.Namespace) -> int:
    return run_command(_tenants, args)


async def _tenants(args: argparse.Namespace) -> int:
    async with registry_client(args) as registry:
        if args.action == "set":
            limits = registry_pb2.TenantLimits(tenant=args.tenant)
            if args.max_active is not None:
                if args.max_active < 0:
                    print("error: --max-active must be 0 (no limit) or more", file=sys.stderr)
                    return 2
                limits.max_active = args.max_active
            if args.max_priority:
                try:
                    limits.max_priority = priority_level(args.max_priority)
                except ValueError as exc:
                    print(f"error: --max-priority: {exc}", file=sys.stderr)
                    return 2
            await registry.call("SetTenantLimits", registry_pb2.SetTenantLimitsRequest(limits=limits, actor=ACTOR))
        listed = await registry.call("ListTenants", registry_pb2.ListTenantsRequest())
    if not listed.tenants:
        print("no tenant has its own limits; every tenant gets the scheduler's defaults")
    for t in listed.tenants:
        shown = []
        if t.HasField("max_active"):
            shown.append(f"max_active={t.max_active}")
        if t.max_priority:
            shown.append(f"max_priority={priority_name(t.max_priority)}")
        print(f"{t.tenant}: " + ", ".join(shown))
    return 0

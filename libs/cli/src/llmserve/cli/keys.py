"""`llmserve keys ...`: API keys, through the Registry service. The secret is printed once, at creation."""

from __future__ import annotations

import argparse
import re
import sys
import time

from llmserve.cli.registry_access import ACTOR, add_access_arguments, registry_client, run_command
from llmserve.common import api_keys
from llmserve.common.tenants import priority_level, priority_name
from llmserve.v1 import registry_pb2

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_s(text: str) -> float:
    """"90d", "12h", "30m", "45s" or plain seconds."""
    match = _DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"a duration such as 30d, 12h, 30m or 45s, got {text!r}")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def add_parsers(ksub: argparse._SubParsersAction) -> None:
    create = ksub.add_parser("create", help="create a key; its secret is printed once")
    create.add_argument("--tenant", required=True, help="the tenant its requests belong to")
    create.add_argument("--role", choices=["inference", "admin"], default="inference", help="default %(default)s")
    create.add_argument("--max-priority", help="highest priority of its requests: low, normal, high or critical")
    create.add_argument("--requests-per-minute", type=int, default=0, help="0 (default): no limit")
    create.add_argument("--tokens-per-minute", type=int, default=0, help="prompt + completion tokens; 0 (default): no limit")
    create.add_argument("--expires", type=duration_s, default=0.0, help="lifetime such as 90d or 12h (default: never)")
    create.add_argument("--name", default="", help="a label, shown in lists and as the actor in the audit")
    lst = ksub.add_parser("list", help="every key (never a secret)")
    lst.add_argument("--all", action="store_true", help="also revoked and expired keys")
    revoke = ksub.add_parser("revoke", help="revoke a key: every router refuses it within 2 s")
    revoke.add_argument("id", help="the key's id (see keys list)")
    for parser in (create, lst, revoke):
        add_access_arguments(parser)
    ksub.add_parser("generate", help="print a new secret without storing it (for a bootstrap admin key)")


def run(args: argparse.Namespace) -> int:
    if args.action == "generate":
        print(api_keys.new_secret())
        return 0
    return run_command(_COMMANDS[args.action], args)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def _key_line(k: registry_pb2.ApiKey) -> str:
    state = api_keys.inactive_reason(k) or "active"
    limits = f"{k.requests_per_minute or '-'}/{k.tokens_per_minute or '-'}"
    return (
        f"{k.id:<12}  {k.name[:20]:<20} {k.tenant[:16]:<16} {api_keys.role_name(k.role):<9} {priority_name(k.max_priority):<8} "
        f"{limits:<14} {_when(k.expires_at):<16} {state}"
    )


async def _create(args: argparse.Namespace) -> int:
    request = registry_pb2.CreateKeyRequest(
        name=args.name, tenant=args.tenant, role=registry_pb2.KeyRole.Value(f"KEY_ROLE_{args.role.upper()}"),
        requests_per_minute=args.requests_per_minute, tokens_per_minute=args.tokens_per_minute, expires_in_s=args.expires, actor=ACTOR,
    )
    if args.max_priority:
        try:
            request.max_priority = priority_level(args.max_priority)
        except ValueError as exc:
            print(f"error: --max-priority: {exc}", file=sys.stderr)
            return 2
    async with registry_client(args) as registry:
        created = await registry.call("CreateKey", request)
    print(f"created key {created.key.id} ({created.key.name}) for tenant {created.key.tenant}, role {args.role}")
    print("secret (shown once; store it now):", file=sys.stderr)
    print(created.secret)
    return 0


async def _list(args: argparse.Namespace) -> int:
    async with registry_client(args) as registry:
        listed = await registry.call("ListKeys", registry_pb2.ListKeysRequest(include_inactive=args.all))
    print(f"{'ID':<12}  {'NAME':<20} {'TENANT':<16} {'ROLE':<9} {'MAX PRIO':<8} {'RPM/TPM':<14} {'EXPIRES':<16} STATE")
    for key in listed.keys:
        print(_key_line(key))
    return 0


async def _revoke(args: argparse.Namespace) -> int:
    async with registry_client(args) as registry:
        key = await registry.call("RevokeKey", registry_pb2.RevokeKeyRequest(id=args.id, actor=ACTOR))
    print(f"revoked key {key.id} ({key.name})")
    return 0


_COMMANDS = {"create": _create, "list": _list, "revoke": _revoke}

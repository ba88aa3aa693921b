"""`llmserve models ...`: the registry from the command line.

The commands change the registry's Redis records through the same atomic scripts as the gRPC
Registry service and the REST admin routes; the registry announces every change on NATS, so workers
follow. `publish` copies (or converts) the artifact into the model store with a progress bar.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from google.protobuf import json_format

from llmserve.common.catalog import CatalogBackup, ModelCatalog
from llmserve.common.config import CommonSettings
from llmserve.common.errors import ServiceError
from llmserve.common.keys import RedisKeys
from llmserve.registry import publish
from llmserve.registry.guard import RegistryGuard
from llmserve.v1 import registry_pb2

ACTOR = "cli"


@dataclass
class Registry:
    redis: aioredis.Redis
    keys: RedisKeys
    catalog: ModelCatalog
    guard: RegistryGuard
    settings: CommonSettings


@contextlib.asynccontextmanager
async def open_registry(settings: CommonSettings | None = None) -> AsyncIterator[Registry]:
    settings = settings or CommonSettings.from_env()
    redis = aioredis.from_url(settings.redis_url)
    keys = RedisKeys(settings.key_prefix)
    catalog = ModelCatalog(redis, keys)
    try:
        yield Registry(redis, keys, catalog, RegistryGuard(catalog, settings.model_store, settings.redis_url, settings.key_prefix), settings)
    finally:
        await redis.aclose()


def add_parsers(msub: argparse._SubParsersAction) -> None:
    show = msub.add_parser("show", help="a model's versions, aliases and canary")
    show.add_argument("name")
    pub = msub.add_parser("publish", help="publish a model version into the store and the registry")
    src = pub.add_mutually_exclusive_group(required=True)
    src.add_argument("--dir", type=Path, help="a transformers model directory")
    src.add_argument("--gguf", type=Path, help="a GGUF file (converted to safetensors)")
    src.add_argument("--default", action="store_true", help="the packaged SmolLM2-135M-Instruct")
    pub.add_argument("--name", help="model name (required with --dir or --gguf)")
    pub.add_argument("--stable", action="store_true", help="make the new version the stable one")
    promote = msub.add_parser("promote", help="make a version the stable one (workers move to it without a restart)")
    promote.add_argument("name")
    promote.add_argument("version", type=int)
    canary = msub.add_parser("canary", help="send a share of the stable traffic to a version")
    canary.add_argument("name")
    canary.add_argument("version", type=int, help="the version; 0 removes the canary")
    canary.add_argument("--weight", type=int, default=10, help="percent of the stable traffic (default %(default)s)")
    rollback = msub.add_parser("rollback", help="make the previous stable version stable again")
    rollback.add_argument("name")
    retire = msub.add_parser("retire", help="never serve a version again")
    retire.add_argument("name")
    retire.add_argument("version", type=int)
    audit = msub.add_parser("audit", help="the latest registry changes")
    audit.add_argument("name", nargs="?", default="")
    audit.add_argument("--limit", type=int, default=20)
    export = msub.add_parser("export", help="write every registry record to a JSON file (a backup)")
    export.add_argument("file", type=Path)
    imp = msub.add_parser("import", help="restore registry records from an export")
    imp.add_argument("file", type=Path)
    msub.add_parser("reinit", help="start an empty registry after Redis lost its data (version numbers continue)")
    fb = msub.add_parser("fallback", help="serve another model while this one has no live worker")
    fb.add_argument("name", help="the model")
    target = fb.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", help="the model served instead")
    target.add_argument("--clear", action="store_true", help="remove the fallback")


def run(args: argparse.Namespace) -> int:
    import asyncio

    command = _COMMANDS[args.action]
    try:
        return asyncio.run(command(args))
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except (FileNotFoundError, NotADirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _version_line(v: registry_pb2.ModelVersion) -> str:
    aliases = ",".join(v.aliases) + (f" ({v.canary_weight}%)" if "canary" in v.aliases else "")
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(v.created_at))
    state = "retired" if v.retired else ""
    return f"{v.version:>7}  {aliases:<20} {state:<8} {created}  {v.sha256[:12]}  {v.source}"


def _change_line(entry: registry_pb2.AuditEntry) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.at))
    detail = f"v{entry.version}"
    if entry.previous:
        detail += f" (was v{entry.previous})"
    if entry.action == "canary":
        detail += f" weight {entry.weight}%"
    return f"{when}  {entry.action:<9} {entry.model:<28} {detail:<20} by {entry.actor}"


async def _show(args: argparse.Namespace) -> int:
    async with open_registry() as reg:
        versions = await reg.catalog.list_versions(args.name)
        if not versions:
            raise ServiceError.not_found(f"model {args.name!r} is not published")
        fallback = await reg.catalog.fallback(args.name)
    print(f"{args.name}" + (f" (fallback: {fallback})" if fallback else ""))
    print(f"{'VERSION':>7}  {'ALIASES':<20} {'STATE':<8} {'PUBLISHED':<16}  {'SHA256':<12}  SOURCE")
    for v in versions:
        print(_version_line(v))
    return 0


async def _publish(args: argparse.Namespace) -> int:
    async with open_registry() as reg:
        store = reg.settings.model_store
        if args.default:
            record = await publish.ensure_default_model(reg.catalog, store, guard=reg.guard, actor=ACTOR)
        elif not args.name:
            print("error: --name is required with --dir or --gguf", file=sys.stderr)
            return 2
        elif args.dir:
            record = await publish.publish_directory(reg.catalog, store, args.name, args.dir, make_stable=args.stable, guard=reg.guard, actor=ACTOR)
        else:
            record = await publish.publish_gguf(reg.catalog, store, args.name, args.gguf, make_stable=args.stable, guard=reg.guard, actor=ACTOR)
    print(f"published {record.name} v{record.version} sha256={record.sha256[:16]}... aliases={list(record.aliases)}")
    return 0


async def _change(args: argparse.Namespace) -> int:
    async with open_registry() as reg:
        await reg.guard.check()
        if args.action == "promote":
            audit_id = await reg.catalog.promote(args.name, args.version, ACTOR)
        elif args.action == "canary":
            audit_id = await reg.catalog.set_canary(args.name, args.version, args.weight, ACTOR)
        elif args.action == "rollback":
            audit_id = await reg.catalog.rollback(args.name, ACTOR)
        else:
            audit_id = await reg.catalog.retire(args.name, args.version, ACTOR)
        print(_change_line(await reg.catalog.audit_entry(audit_id)))
    return 0


async def _audit(args: argparse.Namespace) -> int:
    async with open_registry() as reg:
        for entry in await reg.catalog.audit(args.name, args.limit):
            print(_change_line(entry))
    return 0


async def _export(args: argparse.Namespace) -> int:
    async with open_registry() as reg:
        await reg.guard.check()
        snapshot = await CatalogBackup(reg.redis, reg.keys, reg.catalog).export()
    args.file.write_text(json_format.MessageToJson(snapshot, preserving_proto_field_name=True))
    print(f"exported {len(snapshot.models)} models, {sum(len(m.versions) for m in snapshot.models)} versions to {args.file}")
    return 0


async def _import(args: argparse.Namespace) -> int:
    snapshot = json_format.Parse(args.file.read_text(), registry_pb2.RegistrySnapshot())
    async with open_registry() as reg:
        models, versions = await CatalogBackup(reg.redis, reg.keys, reg.catalog).import_(
            snapshot, ACTOR, min_counters=reg.guard.last_versions()
        )
        await reg.guard.check()
    print(f"imported {models} models, {versions} versions from {args.file}")
    return 0


async def _reinit(args: argparse.Namespace) -> int:
    async with open_registry() as reg:
        registry_id = await reg.guard.reinit(reg.redis, reg.keys)
        counters = reg.guard.last_versions()
    print(f"started registry {registry_id}; version numbers continue from {counters or 'nothing published yet'}")
    return 0


async def _fallback(args: argparse.Namespace) -> int:
    async with open_registry() as reg:
        await reg.catalog.set_fallback(args.name, None if args.clear else args.to, actor=ACTOR)
    print(f"{args.name}: fallback {'removed' if args.clear else 'is ' + args.to}")
    return 0


_COMMANDS = {
    "show": _show,
    "publish": _publish,
    "promote": _change,
    "canary": _change,
    "rollback": _change,
    "retire": _change,
    "audit": _audit,
    "export": _export,
    "import": _import,
    "reinit": _reinit,
    "fallback": _fallback,
}

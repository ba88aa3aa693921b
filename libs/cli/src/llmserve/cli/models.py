"""`llmserve models ...`: the registry from the command line, as a client of the Registry service.

Every command is a call to the Registry gRPC API (see registry_access.py), which guards, makes and
audits the change and announces it on NATS, so workers follow. `publish` shows the registry's
progress (checksum, copy) as progress bars. Paths are read by the registry: with `llmserve up` it
runs on this machine; elsewhere the artifact must lie where the registry can read it (the model
store's volume). A GGUF file is converted by the registry when it has the model worker's code
(torch), else here, into the model store, and the registry moves the result into place.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

from google.protobuf import json_format
from tqdm import tqdm

from llmserve.cli.registry_access import ACTOR, add_access_arguments, registry_client, run_command
from llmserve.common.config import DEFAULT_MODEL, CommonSettings
from llmserve.common.errors import ServiceError
from llmserve.common.modelstore import packaged_gguf
from llmserve.common.registry_client import CANNOT_CONVERT, RegistryClient
from llmserve.v1 import events_pb2, registry_pb2


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
    for name, parser in msub.choices.items():
        if name != "list":  # list asks the router, not the registry
            add_access_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_command(_COMMANDS[args.action], args)


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
    if not entry.model:
        return f"{when}  {entry.action:<13} {entry.subject:<28} by {entry.actor}"
    return f"{when}  {entry.action:<9} {entry.model:<28} {detail:<20} by {entry.actor}"


async def _show(args: argparse.Namespace) -> int:
    async with registry_client(args) as registry:
        listed = await registry.call("ListVersions", registry_pb2.ListVersionsRequest(name=args.name))
    if not listed.versions:
        raise ServiceError.not_found(f"model {args.name!r} is not published")
    fallback = listed.fallbacks.get(args.name)
    print(f"{args.name}" + (f" (fallback: {fallback})" if fallback else ""))
    print(f"{'VERSION':>7}  {'ALIASES':<20} {'STATE':<8} {'PUBLISHED':<16}  {'SHA256':<12}  SOURCE")
    for v in listed.versions:
        print(_version_line(v))
    return 0


async def publish_stream(registry: RegistryClient, request: registry_pb2.PublishRequest, show: bool = True) -> registry_pb2.ModelVersion:
    """One PublishStream call, its stages drawn as progress bars; returns the version."""
    bars: dict[str, tqdm] = {}
    try:
        async for update in registry.publish(request):
            if update.HasField("version"):
                return update.version
            stage = update.stage
            bar = bars.get(stage.name)
            if bar is None:
                label = "converting (once, about 30 s)" if stage.name == "convert" else stage.name
                bar = bars[stage.name] = tqdm(total=stage.total_bytes or None, unit="B", unit_scale=True, desc=label, disable=not show)
            bar.update(stage.done_bytes - bar.n)
    finally:
        for bar in bars.values():
            bar.close()
    raise ServiceError.internal("the registry ended the publish without a version")


async def publish_converting_here(
    registry: RegistryClient, request: registry_pb2.PublishRequest, gguf_file: Path, store: Path, show: bool = True
) -> registry_pb2.ModelVersion:
    """Publishes; when the registry cannot convert GGUF (no torch beside it), converts here into the
    model store and lets the registry move the result into place."""
    try:
        return await publish_stream(registry, request, show)
    except ServiceError as exc:
        if exc.reason != CANNOT_CONVERT:
            raise
    try:
        from llmserve.model_worker.convert import convert_gguf
    except ModuleNotFoundError:
        raise ServiceError.invalid(
            "neither the registry nor this machine can convert GGUF (llmserve-model-worker is not installed): publish a "
            "transformers directory with --dir"
        ) from None
    staging = store / ".staging" / f"publish-{uuid.uuid4().hex}"
    if show:
        print(f"converting {gguf_file.name} to safetensors here (about 30 s)...", flush=True)
    convert_gguf(gguf_file, staging)
    directory = registry_pb2.PublishRequest(
        name=request.name or DEFAULT_MODEL, directory=str(staging), make_stable=request.make_stable, move=True,
        actor=request.actor,
    )
    return await publish_stream(registry, directory, show)


async def ensure_default(registry: RegistryClient, store: Path, actor: str = ACTOR, show: bool = True) -> registry_pb2.ModelVersion:
    """The packaged default model's stable version, published (and converted) on first use."""
    try:
        return await registry.call("GetVersion", registry_pb2.GetVersionRequest(name=DEFAULT_MODEL, alias="stable"))
    except ServiceError as exc:
        if exc.code != events_pb2.ERROR_CODE_NOT_FOUND:
            raise
    request = registry_pb2.PublishRequest(packaged_default=True, actor=actor)
    return await publish_converting_here(registry, request, packaged_gguf(), store, show)


async def _publish(args: argparse.Namespace) -> int:
    store = CommonSettings.from_env().model_store
    async with registry_client(args) as registry:
        if args.default:
            record = await ensure_default(registry, store)
        elif not args.name:
            print("error: --name is required with --dir or --gguf", file=sys.stderr)
            return 2
        elif args.dir:
            request = registry_pb2.PublishRequest(name=args.name, directory=str(args.dir.resolve()), make_stable=args.stable, actor=ACTOR)
            record = await publish_stream(registry, request)
        else:
            request = registry_pb2.PublishRequest(name=args.name, gguf_file=str(args.gguf.resolve()), make_stable=args.stable, actor=ACTOR)
            record = await publish_converting_here(registry, request, args.gguf.resolve(), store)
    print(f"published {record.name} v{record.version} sha256={record.sha256[:16]}... aliases={list(record.aliases)}")
    return 0


async def _change(args: argparse.Namespace) -> int:
    requests = {
        "promote": ("Promote", lambda: registry_pb2.PromoteRequest(name=args.name, version=args.version, actor=ACTOR)),
        "canary": ("SetCanary", lambda: registry_pb2.SetCanaryRequest(name=args.name, version=args.version, weight=args.weight, actor=ACTOR)),
        "rollback": ("Rollback", lambda: registry_pb2.RollbackRequest(name=args.name, actor=ACTOR)),
        "retire": ("Retire", lambda: registry_pb2.RetireRequest(name=args.name, version=args.version, actor=ACTOR)),
        "fallback": ("SetFallback", lambda: registry_pb2.SetFallbackRequest(name=args.name, fallback="" if args.clear else args.to, actor=ACTOR)),
    }
    method, request = requests[args.action]
    async with registry_client(args) as registry:
        change = await registry.call(method, request())
    print(_change_line(change.entry))
    return 0


async def _audit(args: argparse.Namespace) -> int:
    async with registry_client(args) as registry:
        listed = await registry.call("ListAudit", registry_pb2.ListAuditRequest(name=args.name, limit=args.limit))
    for entry in listed.entries:
        print(_change_line(entry))
    return 0


async def _export(args: argparse.Namespace) -> int:
    async with registry_client(args) as registry:
        snapshot = await registry.call("Export", registry_pb2.ExportRequest())
    args.file.write_text(json_format.MessageToJson(snapshot, preserving_proto_field_name=True))
    print(f"exported {len(snapshot.models)} models, {sum(len(m.versions) for m in snapshot.models)} versions to {args.file}")
    return 0


async def _import(args: argparse.Namespace) -> int:
    snapshot = json_format.Parse(args.file.read_text(), registry_pb2.RegistrySnapshot())
    async with registry_client(args) as registry:
        done = await registry.call("Import", snapshot)
    print(f"imported {done.models} models, {done.versions} versions from {args.file}")
    return 0


async def _reinit(args: argparse.Namespace) -> int:
    async with registry_client(args) as registry:
        done = await registry.call("Reinit", registry_pb2.ReinitRequest(actor=ACTOR))
    counters = dict(done.last_versions)
    print(f"started registry {done.registry_id}; version numbers continue from {counters or 'nothing published yet'}")
    return 0


_COMMANDS = {
    "show": _show,
    "publish": _publish,
    "promote": _change,
    "canary": _change,
    "rollback": _change,
    "retire": _change,
    "fallback": _change,
    "audit": _audit,
    "export": _export,
    "import": _import,
    "reinit": _reinit,
}

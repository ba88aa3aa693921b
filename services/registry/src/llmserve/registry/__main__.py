"""python -m llmserve.registry — serves the model registry over gRPC and announces its changes on NATS.

`python -m llmserve.registry bootstrap-admin-key --secret-file F` instead stores an admin key for the
secret in F (once; idempotent) and exits: how a cluster with auth required gets its first admin key
(deploy/docker-compose.yml runs it as a one-shot job from a compose secret).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

import grpc
import structlog

from llmserve.common import api_keys
from llmserve.common.auth import Authenticator
from llmserve.common.catalog import CatalogBackup
from llmserve.common.config import CommonSettings, refuse_insecure_listen
from llmserve.common.errors import ServiceError
from llmserve.common.grpc_server import AuthInterceptor, ErrorInterceptor, add_health_and_reflection, follow_readiness
from llmserve.common.keys import RedisKeys
from llmserve.common.metrics_server import serve_metrics
from llmserve.common.redisio import redis_client
from llmserve.common.runtime import run_main, service_runtime
from llmserve.registry import records
from llmserve.registry.announcer import ChangeAnnouncer
from llmserve.registry.grpc_api import REGISTRY_SERVICE, RegistryServicer, role_of
from llmserve.registry.guard import RegistryGuard
from llmserve.registry.settings import RegistrySettings
from llmserve.v1 import events_pb2, registry_pb2, registry_pb2_grpc

log = structlog.get_logger()


async def run(settings: RegistrySettings) -> None:
    common, grpc_addr = settings.common, settings.grpc_addr
    refuse_insecure_listen(common, "registry", grpc_addr)
    async with service_runtime(common, events_pb2.INSTANCE_KIND_REGISTRY) as rt:
        # Listeners first: health answers NOT_SERVING (and calls UNAVAILABLE) while Redis or NATS is away.
        serve_metrics(settings.metrics_addr, rt.readiness)
        catalog = rt.catalog(rt.redis)
        guard = RegistryGuard(catalog, common.model_store, common.redis_url, common.key_prefix)
        authenticator = Authenticator(rt.redis, rt.keys, common.auth_required)
        server = grpc.aio.server(interceptors=[ErrorInterceptor(), AuthInterceptor(authenticator, role_of)])
        servicer = RegistryServicer(
            catalog, CatalogBackup(rt.redis, rt.keys, catalog), guard, common.model_store, rt.redis, rt.keys, authenticator,
            settings.wait_replicas, settings.wait_timeout_s,
        )
        registry_pb2_grpc.add_RegistryServicer_to_server(servicer, server)
        health = add_health_and_reflection(server, [REGISTRY_SERVICE])
        await follow_readiness(health, [REGISTRY_SERVICE], rt.readiness)
        if server.add_insecure_port(grpc_addr) == 0:
            raise SystemExit(f"cannot listen on {grpc_addr}")
        await server.start()
        rt.stack.push_async_callback(server.stop, 5)
        log.info("registry_listening", grpc=grpc_addr)
        redis = await rt.connect_redis()
        nc = await rt.connect_nats()
        await authenticator.follow_revocations(nc, rt.subjects)
        rt.reconnect_hooks.append(authenticator.forget_all)
        rt.start_heartbeat(nc)
        announcer = asyncio.create_task(ChangeAnnouncer(redis, rt.keys, nc, rt.subjects).run(), name="announcer")
        rt.started()
        while not rt.stop.is_set():
            # Ready while Redis holds the registry the model store knows of (see guard.py).
            try:
                await guard.check()
                rt.readiness.clear("registry")
            except ServiceError as exc:
                rt.readiness.block("registry", exc.message)
            except Exception as exc:  # Redis unreachable
                rt.readiness.block("registry", f"Redis unreachable: {exc}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(rt.stop.wait(), common.heartbeat_interval_s)
        announcer.cancel()


async def bootstrap_admin_key(common: CommonSettings, secret_file: Path, name: str, tenant: str) -> int:
    """Stores an admin key for the secret in `secret_file` unless it exists, with the registry's own
    code, run once before (or beside) the service."""
    secret = secret_file.read_text().strip()
    if api_keys.key_id_of(secret) is None:
        print(f"error: {secret_file} does not hold an llmserve key; make one with `llmserve keys generate`", file=sys.stderr)
        return 2
    redis = redis_client(common)
    keys = RedisKeys(common.key_prefix)
    try:
        # No guard: keys hold no version numbers, and after Redis lost its data this is how an admin
        # gets back in to import a backup or reinit.
        request = registry_pb2.CreateKeyRequest(name=name, tenant=tenant, role=registry_pb2.KEY_ROLE_ADMIN)
        key, _ = await records.create_key(redis, keys, request, actor="bootstrap", secret=secret)
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await redis.aclose()
    print(f"admin key {key.id} ({key.name}) is in place")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmserve.registry")
    sub = parser.add_subparsers(dest="command")
    boot = sub.add_parser("bootstrap-admin-key", help="store an admin key for a secret kept in a file (idempotent)")
    boot.add_argument("--secret-file", type=Path, required=True)
    boot.add_argument("--name", default="bootstrap")
    boot.add_argument("--tenant", default="operators")
    args = parser.parse_args(argv)
    settings = RegistrySettings.from_env()
    if args.command == "bootstrap-admin-key":
        return asyncio.run(bootstrap_admin_key(settings.common, args.secret_file, args.name, args.tenant))
    return run_main("registry", settings.common, lambda: run(settings))


if __name__ == "__main__":
    sys.exit(main())

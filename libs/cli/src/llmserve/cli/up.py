"""`llmserve up`: a whole local cluster in one command.

Reuses NATS and Redis when they answer at the configured URLs, otherwise starts them as children;
publishes the default model on first run; starts every service as `python -m llmserve.<service>`;
waits until the router is ready; restarts a service that crashes (with backoff); stops everything
on Ctrl-C or SIGTERM, services first, then the servers it started.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmserve.cli import infra
from llmserve.common.config import CommonSettings

# Start order; shutdown goes in reverse.
SERVICES = ("registry", "scheduler", "monitor", "model_worker", "router")
MAX_BACKOFF_S = 30.0


@dataclass
class Child:
    name: str
    module: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default_factory=time.monotonic)

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started_at = time.monotonic()


def _wait_router_ready(addr: str, children: list[Child], timeout_s: float, should_stop) -> bool:
    """True once the router reports SERVING; False when asked to stop first."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if should_stop():
                return False
            for child in children:
                if child.proc is not None and child.proc.poll() is not None:
                    raise RuntimeError(f"{child.name} exited with code {child.proc.returncode}; see {child.log_path}")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.25)
    raise TimeoutError(f"the cluster was not ready within {timeout_s:.0f} s; logs are in {children[0].log_path.parent}")


def up(state_dir: Path, grpc_addr: str, http_addr: str, workers: int, ready_timeout_s: float, schedulers: int = 2) -> int:
    settings = CommonSettings.from_env()
    state_dir.mkdir(parents=True, exist_ok=True)
    logs = state_dir / "logs"
    logs.mkdir(exist_ok=True)
    stop = False

    def _on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    servers = _start_missing_servers(settings, state_dir, logs)
    children: list[Child] = []
    try:
        env = {**os.environ, "LLMSERVE_LOG_FORMAT": os.environ.get("LLMSERVE_LOG_FORMAT", "json"), "LLMSERVE_ROUTER_GRPC_ADDR": grpc_addr,
               "LLMSERVE_ROUTER_HTTP_ADDR": http_addr, "LLMSERVE_REGISTRY_GRPC_ADDR": settings.registry_addr}
        children = _service_children(env, {"model_worker": workers, "scheduler": schedulers}, logs)
        # The registry first: it is the one writer of the registry, so it publishes the default model.
        registry, others = children[0], children[1:]
        registry.start()
        record = asyncio.run(_publish_default(settings, registry, ready_timeout_s, lambda: stop))
        print(f"Model     {record.name} v{record.version} ({settings.model_store / record.path})")
        for child in others:
            child.start()
        print("Starting services (logs in " + str(logs) + ") ...", flush=True)
        if _wait_router_ready(grpc_addr, children, ready_timeout_s, lambda: stop):
            _print_ready(grpc_addr, http_addr)
            _supervise(children, lambda: stop)
        print("\nStopping ...", flush=True)
        _stop_children(children)
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        _stop_children(children)
        return 1
    finally:
        for server in reversed(servers):
            infra.stop_process(server)
    return 0


def _start_missing_servers(settings: CommonSettings, state_dir: Path, logs: Path) -> list[subprocess.Popen]:
    """NATS and Redis: reused when they answer at the configured URLs, else started as children."""
    servers: list[subprocess.Popen] = []
    nats_host, nats_port = infra.host_port(settings.nats_url, 4222)
    if infra.reachable(nats_host, nats_port):
        print(f"NATS      {settings.nats_url} (already running)")
    else:
        servers.append(infra.start_nats(nats_host, nats_port, state_dir / "nats", logs / "nats-server.log"))
        print(f"NATS      {settings.nats_url} (started, JetStream store in {state_dir / 'nats'})")
    redis_host, redis_port = infra.host_port(settings.redis_url, 6379)
    if infra.reachable(redis_host, redis_port):
        print(f"Redis     {settings.redis_url} (already running)")
    else:
        servers.append(infra.start_redis(redis_host, redis_port, state_dir / "redis", log_file=logs / "redis-server.log"))
        print(f"Redis     {settings.redis_url} (started, AOF in {state_dir / 'redis'})")
    return servers


def _service_children(env: dict[str, str], counts: dict[str, int], logs: Path) -> list[Child]:
    """One child per instance, in start order; `counts` says how many of a service (default one)."""
    children = []
    for service in SERVICES:
        count = counts.get(service, 1)
        for i in range(count):
            name = service.replace("_", "-") + (f"-{i}" if count > 1 else "")
            children.append(Child(name, f"llmserve.{service}", env, logs / f"{name}.log"))
    return children


def _print_ready(grpc_addr: str, http_addr: str) -> None:
    print("\nllmserve is ready.")
    print(f"  gRPC        {grpc_addr}  (llmserve.v1.Inference; try: llmserve chat \"What is the capital of France?\")")
    print(f"  REST        http://{http_addr}/v1  (OpenAI API)")
    print(f"  playground  http://{http_addr}/   docs: http://{http_addr}/docs   metrics: http://{http_addr}/metrics")
    monitor = os.environ.get("LLMSERVE_MONITOR_HTTP_ADDR", "127.0.0.1:8001")
    print(f"  status      http://{monitor}/   (or: llmserve status)")
    print("Press Ctrl-C to stop.", flush=True)


async def _publish_default(settings: CommonSettings, registry: Child, timeout_s: float, should_stop):
    """The default model's version, published through the registry on first run; waits for the registry
    to answer. The guard refuses (saying what to do) when Redis lost the registry this model store remembers."""
    from llmserve.cli.models import ensure_default
    from llmserve.cli.registry_access import api_key
    from llmserve.common.errors import ServiceError
    from llmserve.common.registry_client import RegistryClient
    from llmserve.v1 import events_pb2

    client = RegistryClient.with_key(settings.registry_addr, api_key(None))
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                return await ensure_default(client, settings.model_store, actor="llmserve-up")
            except ServiceError as exc:
                if exc.code != events_pb2.ERROR_CODE_UNAVAILABLE or time.monotonic() > deadline or should_stop():
                    raise
            if registry.proc is not None and registry.proc.poll() is not None:
                raise RuntimeError(f"the registry exited with code {registry.proc.returncode}; see {registry.log_path}")
            await asyncio.sleep(0.25)
    finally:
        await client.close()


def _supervise(children: list[Child], should_stop) -> None:
    """Restarts services that exit (a crashed one with exponential backoff) until asked to stop."""
    while not should_stop():
        now = time.monotonic()
        for child in children:
            if child.proc is None:
                if now >= child.next_start:
                    child.start()
                    print(f"restarted {child.name} (restart {child.restarts})", flush=True)
                continue
            code = child.proc.poll()
            if code is None:
                continue
            # A service that ran a while before crashing starts again from the shortest backoff.
            if now - child.started_at > 60:
                child.restarts = 0
            # Exit code 0 after a while is a service stopped on purpose (a worker drained by a SIGTERM
            # from outside): replace it at once. A crash, or a quick exit, backs off so no loop spins.
            stopped_cleanly = code == 0 and now - child.started_at > 10
            delay = 0.0 if stopped_cleanly else min(MAX_BACKOFF_S, 2.0 ** child.restarts)
            child.restarts += 1
            child.next_start = now + delay
            child.proc = None
            print(f"{child.name} exited with code {code}; restarting in {delay:.0f} s (log: {child.log_path})", flush=True)
        time.sleep(0.2)


def _stop_children(children: list[Child], grace_s: float = 30.0) -> None:
    for child in reversed(children):
        if child.proc is not None and child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in reversed(children):
        if child.proc is None:
            continue
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait(5)

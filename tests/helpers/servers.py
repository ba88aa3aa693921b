"""nats-server and redis-server for tests: started on free ports, or reused when NATS_URL / REDIS_URL name one."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats

from llmserve.cli import infra


@dataclass
class ServerProcess:
    """A server a test may stop, kill or restart; `url` stays the same across restarts."""

    kind: str
    url: str
    data_dir: Path
    proc: subprocess.Popen | None = None
    external: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def host_port(self) -> tuple[str, int]:
        return infra.host_port(self.url, 0)

    def start(self) -> None:
        if self.external:
            return
        host, port = self.host_port
        if self.kind == "nats":
            self.proc = infra.start_nats(host, port, self.data_dir)
        else:
            self.proc = infra.start_redis(host, port, self.data_dir, append_only=self.extra.get("aof", True))

    def stop(self) -> None:
        if self.proc is not None:
            infra.stop_process(self.proc)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def _server(kind: str, env_var: str, url_format: str, tmp: Path) -> ServerProcess:
    url = os.environ.get(env_var)
    if url:
        return ServerProcess(kind, url, tmp, external=True)
    server = ServerProcess(kind, url_format.format(port=infra.free_port()), tmp / kind)
    server.start()
    return server


def nats_server(tmp: Path) -> ServerProcess:
    return _server("nats", "NATS_URL", "nats://127.0.0.1:{port}", tmp)


def redis_server(tmp: Path) -> ServerProcess:
    return _server("redis", "REDIS_URL", "redis://127.0.0.1:{port}/0", tmp)


@dataclass
class NatsNode:
    """One server of a loopback NATS cluster, with JetStream; it can be killed and started again."""

    name: str
    port: int
    cluster_port: int
    routes: list[str]
    data_dir: Path
    proc: subprocess.Popen | None = None
    # Clients learn no other server of the cluster from this one (they keep to their seed list).
    no_advertise: bool = False

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            infra.find_binary("nats-server"), "-a", "127.0.0.1", "-p", str(self.port), "-n", self.name, "-js", "-sd", str(self.data_dir),
            "--cluster_name", "llmserve", "--cluster", f"nats://127.0.0.1:{self.cluster_port}", "--routes", ",".join(self.routes),
            *(["--no_advertise=true"] if self.no_advertise else []),
        ]
        log = open(self.data_dir.parent / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        infra.wait_until_reachable("127.0.0.1", self.port, self.proc, "nats-server")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            infra.stop_process(self.proc)
            self.proc = None


def nats_cluster(tmp: Path, size: int = 3, no_advertise: bool = False) -> list[NatsNode]:
    """`size` nats-servers clustered on loopback, each with JetStream and a store of its own."""
    ports = [(infra.free_port(), infra.free_port()) for _ in range(size)]
    nodes = []
    for i, (port, cluster_port) in enumerate(ports):
        routes = [f"nats://127.0.0.1:{c}" for j, (_, c) in enumerate(ports) if j != i]
        nodes.append(NatsNode(f"n{i}", port, cluster_port, routes, tmp / "nats-cluster" / f"n{i}", no_advertise=no_advertise))
    for node in nodes:
        node.start()
    return nodes


async def jetstream_ready(urls: list[str], timeout_s: float = 30.0) -> None:
    """Until the cluster has elected its JetStream meta leader (an account info answers)."""
    deadline = time.monotonic() + timeout_s
    nc = await nats.connect(urls)
    try:
        while True:
            try:
                await nc.jetstream().account_info()
                return
            except Exception:
                assert time.monotonic() < deadline, "JetStream of the NATS cluster never became ready"
                await asyncio.sleep(0.2)
    finally:
        await nc.close()


@dataclass
class SentinelGroup:
    """A Redis primary, one replica and three Sentinels on loopback, master name "llmserve"."""

    primary: ServerProcess
    replica: ServerProcess
    sentinels: list[subprocess.Popen]
    sentinel_ports: list[int]

    @property
    def sentinel_spec(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def stop(self) -> None:
        for proc in self.sentinels:
            infra.stop_process(proc)
        self.primary.stop()
        self.replica.stop()


def redis_sentinel_group(tmp: Path, down_after_ms: int = 1000) -> SentinelGroup:
    primary = ServerProcess("redis", f"redis://127.0.0.1:{infra.free_port()}/0", tmp / "primary")
    primary.start()
    replica_port = infra.free_port()
    replica = ServerProcess("redis", f"redis://127.0.0.1:{replica_port}/0", tmp / "replica")
    (tmp / "replica").mkdir(parents=True, exist_ok=True)
    replica.proc = subprocess.Popen(
        [infra.find_binary("redis-server"), "--bind", "127.0.0.1", "--port", str(replica_port), "--dir", str(tmp / "replica"),
         "--save", "", "--appendonly", "yes", "--replicaof", "127.0.0.1", str(primary.host_port[1])],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )
    infra.wait_until_reachable("127.0.0.1", replica_port, replica.proc, "redis replica")
    sentinels, ports = [], []
    for i in range(3):
        port = infra.free_port()
        config = tmp / f"sentinel-{i}.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {tmp}\n"
            f"sentinel monitor llmserve 127.0.0.1 {primary.host_port[1]} 2\n"
            f"sentinel down-after-milliseconds llmserve {down_after_ms}\n"
            "sentinel failover-timeout llmserve 5000\n"
        )
        proc = subprocess.Popen([infra.find_binary("redis-server"), str(config), "--sentinel"], stdout=open(tmp / f"sentinel-{i}.log", "ab"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        infra.wait_until_reachable("127.0.0.1", port, proc, "redis sentinel")
        sentinels.append(proc)
        ports.append(port)
    return SentinelGroup(primary, replica, sentinels, ports)

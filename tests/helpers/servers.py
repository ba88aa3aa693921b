"""nats-server and redis-server for tests: started on free ports, or reused when NATS_URL / REDIS_URL name one."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

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

"""Service processes for end-to-end tests, each started as `python -m llmserve.<service>`.

A test cluster has its own subject and key prefix, so clusters of different tests share one NATS
and one Redis without seeing each other.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from llmserve.cli import infra


@dataclass
class ServiceProcess:
    name: str
    module: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env=self.env,
            stdout=open(self.log_path, "ab"),
            stderr=subprocess.STDOUT,
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}:\n{self.log_tail()}")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@dataclass
class Cluster:
    nats_url: str
    redis_url: str
    prefix: str
    model_store: Path
    log_dir: Path
    default_model: str = "SmolLM2-135M-Instruct"
    grpc_port: int = field(default_factory=infra.free_port)
    http_port: int = field(default_factory=infra.free_port)
    monitor_port: int = field(default_factory=infra.free_port)
    scheduler_metrics_port: int = field(default_factory=infra.free_port)
    registry_port: int = field(default_factory=infra.free_port)
    registry_metrics_port: int = field(default_factory=infra.free_port)
    worker_metrics_ports: list[int] = field(default_factory=list)
    services: list[ServiceProcess] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def registry_addr(self) -> str:
        return f"127.0.0.1:{self.registry_port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSERVE_")}
        env.update(
            LLMSERVE_NATS_URL=self.nats_url,
            LLMSERVE_REDIS_URL=self.redis_url,
            LLMSERVE_SUBJECT_PREFIX=self.prefix,
            LLMSERVE_KEY_PREFIX=f"{self.prefix}:",
            LLMSERVE_MODEL_STORE=str(self.model_store),
            LLMSERVE_DEFAULT_MODEL=self.default_model,
            LLMSERVE_LOG_FORMAT="json",
            LLMSERVE_ROUTER_GRPC_ADDR=self.grpc_addr,
            LLMSERVE_ROUTER_HTTP_ADDR=f"127.0.0.1:{self.http_port}",
            LLMSERVE_MONITOR_HTTP_ADDR=f"127.0.0.1:{self.monitor_port}",
            LLMSERVE_REGISTRY_ADDR=self.registry_addr,
            LLMSERVE_WORKER_TORCH_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def start_service(self, module: str, name: str | None = None, **env: str) -> ServiceProcess:
        name = name or module
        service = ServiceProcess(name, f"llmserve.{module}", {**self.env, **env}, self.log_dir / f"{name}.log")
        service.start()
        self.services.append(service)
        return service

    def start(self, workers: int = 1, **worker_env: str) -> Cluster:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.start_service(
            "registry",
            LLMSERVE_REGISTRY_GRPC_ADDR=self.registry_addr,
            LLMSERVE_REGISTRY_METRICS_ADDR=f"127.0.0.1:{self.registry_metrics_port}",
        )
        self.start_service("scheduler", LLMSERVE_SCHEDULER_METRICS_ADDR=f"127.0.0.1:{self.scheduler_metrics_port}")
        self.start_service("monitor")
        for i in range(workers):
            port = infra.free_port()
            self.worker_metrics_ports.append(port)
            self.start_service("model_worker", f"worker-{i}", LLMSERVE_WORKER_METRICS_ADDR=f"127.0.0.1:{port}", **worker_env)
        self.start_service("router")
        self.wait_ready()
        return self

    def until(self, check, timeout_s: float, what: str, poll_s: float = 0.2) -> float:
        """Polls check() until it is true and returns the seconds that took, failing fast (with the log's
        tail) if any service dies."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            for service in self.services:
                service.check_alive()
            if check():
                return time.monotonic() - started
            time.sleep(poll_s)
        tails = "\n".join(f"--- {s.name}\n{s.log_tail(15)}" for s in self.services)
        raise TimeoutError(f"{what} within {timeout_s:.0f} s\n{tails}")

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until the router reports SERVING (a worker is live); fails fast if any service dies."""
        with grpc.insecure_channel(self.grpc_addr) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def serving() -> bool:
                try:
                    return stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING
                except grpc.RpcError:
                    return False

            self.until(serving, timeout_s, "cluster not ready")

    def forget_stopped(self) -> None:
        """Drops services a test stopped on purpose, so readiness checks do not count them as crashed."""
        self.services[:] = [s for s in self.services if s.proc is None or s.proc.poll() is None]

    def wait_workers(self, count: int, timeout_s: float = 120.0) -> None:
        """Until the router sees `count` live workers (ListModels), failing fast if a service dies."""
        from llmserve.v1 import inference_pb2, inference_pb2_grpc

        with grpc.insecure_channel(self.grpc_addr) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)

            def enough() -> bool:
                models = stub.ListModels(inference_pb2.ListModelsRequest(), timeout=5).models
                return sum(m.live_workers for m in models) >= count

            self.until(enough, timeout_s, f"fewer than {count} live workers")

    def worker_metric(self, name: str, worker: int | None = None) -> float:
        """A worker metric's samples named `name` added over their labels, of one worker or of all."""
        ports = self.worker_metrics_ports if worker is None else [self.worker_metrics_ports[worker]]
        total = 0.0
        for port in ports:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            total += sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)
        return total

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()
        self.services.clear()


@contextlib.contextmanager
def own_cluster(nats_url: str, redis_url: str, model_store: Path, record, log_dir: Path, workers: int = 1, **env: str):
    """A cluster of its own (the model registered under a fresh prefix, no synthetic probes, `env` for
    every service), started with `workers` workers all seen live, and stopped afterwards."""
    from tests.helpers.registry import register

    prefix = "t" + uuid.uuid4().hex[:10]
    register(redis_url, prefix, record)
    cluster = Cluster(nats_url, redis_url, prefix, model_store, log_dir)
    cluster.extra_env.update(LLMSERVE_MONITOR_PROBE_INTERVAL_S="0", **env)
    try:
        cluster.start(workers=workers)
        cluster.wait_workers(workers)
        yield cluster
    finally:
        cluster.stop()

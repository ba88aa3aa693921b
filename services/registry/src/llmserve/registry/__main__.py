"""python -m llmserve.registry — serves the model registry over gRPC."""

from __future__ import annotations

import os
import sys

import grpc
import structlog

from llmserve.common.config import CommonSettings, env_str
from llmserve.common.grpc_server import ErrorInterceptor, add_health_and_reflection, set_serving
from llmserve.common.metrics_server import serve_metrics
from llmserve.common.runtime import run_main, service_runtime
from llmserve.registry.grpc_api import RegistryServicer
from llmserve.v1 import events_pb2, registry_pb2, registry_pb2_grpc

log = structlog.get_logger()
REGISTRY_SERVICE = registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name


async def run(common: CommonSettings, grpc_addr: str, metrics_addr: str) -> None:
    async with service_runtime(common, events_pb2.INSTANCE_KIND_REGISTRY) as rt:
        redis = rt.connect_redis()
        nc = await rt.connect_nats()
        server = grpc.aio.server(interceptors=[ErrorInterceptor()])
        registry_pb2_grpc.add_RegistryServicer_to_server(RegistryServicer(rt.catalog(redis)), server)
        health = add_health_and_reflection(server, [REGISTRY_SERVICE])
        if server.add_insecure_port(grpc_addr) == 0:
            raise SystemExit(f"cannot listen on {grpc_addr}")
        await server.start()
        await set_serving(health, [REGISTRY_SERVICE], True)
        rt.start_heartbeat(nc)
        serve_metrics(metrics_addr)
        log.info("registry_listening", grpc=grpc_addr)
        await rt.stop.wait()
        await server.stop(5)


def main() -> int:
    common = CommonSettings.from_env()
    # LLMSERVE_REGISTRY_GRPC_ADDR: where the Registry gRPC service listens.
    addr = env_str(os.environ, "LLMSERVE_REGISTRY_GRPC_ADDR", "127.0.0.1:50052")
    # LLMSERVE_REGISTRY_METRICS_ADDR: host:port of the Prometheus /metrics endpoint; empty: off.
    metrics_addr = env_str(os.environ, "LLMSERVE_REGISTRY_METRICS_ADDR", "")
    return run_main("registry", common, lambda: run(common, addr, metrics_addr))


if __name__ == "__main__":
    sys.exit(main())

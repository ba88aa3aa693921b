"""The start-up and shutdown contract (docs/ARCHITECTURE.md, "Starting and stopping").

Every service, started while NATS or Redis cannot be reached, stays up and not ready, says so in one
log line, stops within 2 s on SIGTERM with exit code 0, and becomes ready without a restart once
the dependency comes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import urllib.error
import urllib.request
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmserve.cli import infra
from llmserve.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tests.helpers.cluster import Cluster, ServiceProcess
from tests.helpers.registry import register
from tests.helpers.servers import ServerProcess

pytestmark = pytest.mark.e2e

SERVICES = ("registry", "scheduler", "monitor", "model_worker", "router")
# How soon a service must be ready once its dependency answers: the backoff's cap (4 s) plus an attempt.
READY_AFTER_DEPENDENCY_S = 6.0
STOP_WITHIN_S = 2.0
# Polling interval of the waits that measure how soon something happened.
POLL_S = 0.05


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def _readyz_reason(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return json.loads(response.read()).get("reason", "")
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read()).get("reason", "")
    except OSError:
        return ""


def _grpc_serving(addr: str) -> bool | None:
    """True / False for SERVING / NOT_SERVING, None when nothing answers."""
    with grpc.insecure_channel(addr) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status
        except grpc.RpcError:
            return None
    return status == health_pb2.HealthCheckResponse.SERVING


def _probe_urls(cluster: Cluster) -> dict[str, str]:
    """Each service's /readyz."""
    return {
        "registry": f"http://127.0.0.1:{cluster.registry_metrics_port}/readyz",
        "scheduler": f"http://127.0.0.1:{cluster.scheduler_metrics_port}/readyz",
        "monitor": f"{cluster.monitor_url}/readyz",
        "model_worker": f"http://127.0.0.1:{cluster.worker_metrics_ports[0]}/readyz",
        "router": f"{cluster.http_url}/readyz",
    }


def _start_all(cluster: Cluster) -> dict[str, ServiceProcess]:
    cluster.log_dir.mkdir(parents=True, exist_ok=True)
    cluster.worker_metrics_ports.append(infra.free_port())
    env = {
        "registry": {
            "LLMSERVE_REGISTRY_GRPC_ADDR": f"127.0.0.1:{cluster.registry_port}",
            "LLMSERVE_REGISTRY_METRICS_ADDR": f"127.0.0.1:{cluster.registry_metrics_port}",
        },
        "scheduler": {"LLMSERVE_SCHEDULER_METRICS_ADDR": f"127.0.0.1:{cluster.scheduler_metrics_port}"},
        "monitor": {},
        "model_worker": {"LLMSERVE_WORKER_METRICS_ADDR": f"127.0.0.1:{cluster.worker_metrics_ports[0]}"},
        "router": {},
    }
    return {name: cluster.start_service(name, **env[name]) for name in SERVICES}


def _log_events(service: ServiceProcess) -> list[dict]:
    events = []
    for line in service.log_path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            events.append({"event": "(not JSON)", "line": line})
    return events


def _stop_all_within(services: dict[str, ServiceProcess], seconds: float) -> None:
    """SIGTERM to every service at once; each must exit 0 within `seconds`."""
    sent = time.monotonic()
    for service in services.values():
        service.signal(signal.SIGTERM)
    for name, service in services.items():
        code = service.proc.wait(seconds + 10)
        took = time.monotonic() - sent
        assert code == 0, f"{name} exited with {code}\n{service.log_tail()}"
        assert took <= seconds, f"{name} took {took:.2f} s to stop\n{service.log_tail()}"


def _ask(cluster: Cluster) -> str:
    request = inference_pb2.GenerateRequest(
        messages=inference_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content="What is the capital of France?")]),
        sampling=common_pb2.SamplingParams(max_tokens=12),
    )
    with grpc.insecure_channel(cluster.grpc_addr) as channel:
        return "".join(r.text for r in inference_pb2_grpc.InferenceStub(channel).GenerateStream(request, timeout=60))


@contextlib.asynccontextmanager
async def _running_cluster(tmp_path, model_store, nats_srv, redis_srv, smollm, workers: int, **worker_env: str):
    """A whole cluster of its own prefix, started (in a thread: starting blocks) and stopped around the block."""
    prefix = "s" + uuid.uuid4().hex[:10]
    await asyncio.to_thread(register, redis_srv.url, prefix, smollm)
    cluster = Cluster(nats_srv.url, redis_srv.url, prefix, model_store, tmp_path / "logs")
    try:
        await asyncio.to_thread(cluster.start, workers, **worker_env)
        yield cluster
    finally:
        cluster.stop()


def test_every_service_waits_visibly_and_stops_on_the_first_signal(tmp_path, model_store):
    """Neither NATS nor Redis answers: all five stay up and not ready, log one line each, stop in 2 s."""
    prefix = "s" + uuid.uuid4().hex[:10]
    nowhere_nats = f"nats://127.0.0.1:{infra.free_port()}"
    nowhere_redis = f"redis://127.0.0.1:{infra.free_port()}/0"
    cluster = Cluster(nowhere_nats, nowhere_redis, prefix, model_store, tmp_path / "logs")
    services = _start_all(cluster)
    try:
        probes = _probe_urls(cluster)
        # Every probe answers "not ready" (the process is up, its dependency is not).
        cluster.until(lambda: all(_http_status(url) == 503 for url in probes.values()), 60, "every /readyz says 503", POLL_S)
        assert _grpc_serving(cluster.grpc_addr) is False
        assert _grpc_serving(f"127.0.0.1:{cluster.registry_port}") is False
        for name, url in probes.items():
            assert _http_status(url.replace("/readyz", "/healthz")) == 200, name
        # Several attempts' worth of time (0.5 + 1 + 2 s of backoff): still one line each.
        time.sleep(4)
        for name, service in services.items():
            events = _log_events(service)
            waiting = [e for e in events if e["event"].startswith("waiting_for_")]
            assert len(waiting) == 1, f"{name}: {waiting}"
            assert waiting[0]["event"] in ("waiting_for_redis", "waiting_for_nats"), name
            noisy = [e for e in events if e.get("level") in ("warning", "error") and e is not waiting[0]]
            assert not noisy, f"{name}: {noisy}"
            assert "Traceback" not in service.log_path.read_text(), name
            assert "waiting for" in _readyz_reason(probes[name]), name
        _stop_all_within(services, STOP_WITHIN_S)
    finally:
        cluster.stop()


def test_startup_timeout_gives_up_with_a_clear_message(tmp_path, model_store):
    cluster = Cluster(f"nats://127.0.0.1:{infra.free_port()}", f"redis://127.0.0.1:{infra.free_port()}/0", "s" + uuid.uuid4().hex[:10],
                      model_store, tmp_path / "logs")
    cluster.log_dir.mkdir(parents=True)
    scheduler = cluster.start_service("scheduler", LLMSERVE_STARTUP_TIMEOUT_S="1.5")
    try:
        assert scheduler.proc.wait(30) == 1
        [gave_up] = [e for e in _log_events(scheduler) if e["event"] == "startup_timeout"]
        assert "redis at redis://127.0.0.1" in gave_up["reason"] and "LLMSERVE_STARTUP_TIMEOUT_S" in gave_up["reason"]
        assert "Traceback" not in scheduler.log_path.read_text()
    finally:
        cluster.stop()


def test_cluster_started_before_nats_serves_once_it_comes_up(tmp_path, model_store, redis_srv, smollm):
    prefix = "s" + uuid.uuid4().hex[:10]
    register(redis_srv.url, prefix, smollm)
    nats = ServerProcess("nats", f"nats://127.0.0.1:{infra.free_port()}", tmp_path / "nats")
    cluster = Cluster(nats.url, redis_srv.url, prefix, model_store, tmp_path / "logs")
    services = _start_all(cluster)
    try:
        probes = _probe_urls(cluster)
        # The worker loads its model while NATS is away; wait until every service waits for NATS only.
        def waiting_for_nats_only(name: str) -> bool:
            said = any(e["event"] == "waiting_for_nats" for e in _log_events(services[name]))
            reason = _readyz_reason(probes[name])
            return said and "nats:" in reason and "redis:" not in reason and "model:" not in reason

        cluster.until(lambda: all(waiting_for_nats_only(name) for name in services), 120, "every service waiting for NATS only", POLL_S)
        nats.start()
        took = cluster.until(lambda: all(_http_status(url) == 200 for url in probes.values()), 30, "every service ready", POLL_S)
        assert took <= READY_AFTER_DEPENDENCY_S, f"ready {took:.1f} s after NATS came up"
        assert _grpc_serving(cluster.grpc_addr) is True
        assert "Paris" in _ask(cluster)
        for name, service in services.items():
            events = [e["event"] for e in _log_events(service)]
            assert events.count("waiting_for_nats") == 1 and events.count("nats_connected") == 1, f"{name}: {events}"
        # Idle and serving-ready: the first signal still ends each within 2 s.
        _stop_all_within(services, STOP_WITHIN_S)
    finally:
        cluster.stop()
        nats.stop()


def test_cluster_started_before_redis_serves_once_it_comes_up(tmp_path, model_store, nats_srv, smollm):
    prefix = "s" + uuid.uuid4().hex[:10]
    redis = ServerProcess("redis", f"redis://127.0.0.1:{infra.free_port()}/0", tmp_path / "redis")
    cluster = Cluster(nats_srv.url, redis.url, prefix, model_store, tmp_path / "logs")
    services = _start_all(cluster)
    try:
        probes = _probe_urls(cluster)
        cluster.until(
            lambda: all(any(e["event"] == "waiting_for_redis" for e in _log_events(services[name])) for name in services if name != "monitor"),
            60, "every service but the monitor waiting for Redis", POLL_S,
        )
        assert all("redis:" in _readyz_reason(url) for name, url in probes.items() if name != "monitor")
        redis.start()
        register(redis.url, prefix, smollm)
        took = cluster.until(
            lambda: all("redis:" not in _readyz_reason(url) for url in probes.values()), 30, "every service connected to Redis", POLL_S
        )
        assert took <= READY_AFTER_DEPENDENCY_S, f"connected {took:.1f} s after Redis came up"
        # The worker learns the version only now, and loads the model before it is ready.
        cluster.until(lambda: all(_http_status(url) == 200 for url in probes.values()), 120, "every service ready", POLL_S)
        assert "Paris" in _ask(cluster)
        for name in ("registry", "scheduler", "model_worker", "router"):
            events = [e["event"] for e in _log_events(services[name])]
            assert events.count("waiting_for_redis") == 1 and events.count("redis_connected") == 1, f"{name}: {events}"
        _stop_all_within(services, STOP_WITHIN_S)
    finally:
        cluster.stop()
        redis.stop()


def test_worker_stops_within_2_s_while_loading_its_model(tmp_path, model_store, nats_srv, redis_srv, smollm):
    prefix = "s" + uuid.uuid4().hex[:10]
    register(redis_srv.url, prefix, smollm)
    cluster = Cluster(nats_srv.url, redis_srv.url, prefix, model_store, tmp_path / "logs")
    cluster.log_dir.mkdir(parents=True)
    port = infra.free_port()
    worker = cluster.start_service("model_worker", LLMSERVE_WORKER_METRICS_ADDR=f"127.0.0.1:{port}")
    try:
        cluster.until(lambda: "loading" in _readyz_reason(f"http://127.0.0.1:{port}/readyz"), 60, "the worker loading", POLL_S)
        _stop_all_within({"model_worker": worker}, STOP_WITHIN_S)
    finally:
        cluster.stop()


async def test_rolling_restart_of_workers_fails_no_request(tmp_path, model_store, nats_srv, redis_srv, smollm):
    """Two workers serve a steady load; a third starts, the first gets SIGTERM: every request succeeds."""
    async with _running_cluster(tmp_path, model_store, nats_srv, redis_srv, smollm, 2, LLMSERVE_WORKER_DRAIN_GRACE_S="5") as cluster:
        await asyncio.to_thread(cluster.wait_workers, 2)
        answered: list[str] = []
        failed: list[str] = []
        done = asyncio.Event()

        async def client(stub: inference_pb2_grpc.InferenceStub, n: int) -> None:
            while not done.is_set():
                request = inference_pb2.GenerateRequest(
                    messages=inference_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content=f"Count to {n}.")]),
                    sampling=common_pb2.SamplingParams(max_tokens=16, ignore_eos=True),
                )
                try:
                    responses = [r async for r in stub.GenerateStream(request, timeout=60)]
                    assert responses[-1].usage.completion_tokens == 16
                    answered.append(responses[-1].text)
                except (grpc.aio.AioRpcError, AssertionError) as exc:
                    failed.append(repr(exc))

        def roll() -> None:
            first = next(s for s in cluster.services if s.name == "worker-0")
            cluster.start_service("model_worker", "worker-2", LLMSERVE_WORKER_METRICS_ADDR=f"127.0.0.1:{infra.free_port()}",
                                  LLMSERVE_WORKER_DRAIN_GRACE_S="5")
            cluster.wait_workers(3)
            first.signal(signal.SIGTERM)
            assert first.proc.wait(30) == 0, first.log_tail()
            cluster.forget_stopped()

        async with grpc.aio.insecure_channel(cluster.grpc_addr) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            clients = [asyncio.create_task(client(stub, n)) for n in range(4)]
            await asyncio.to_thread(roll)
            before = len(answered)
            # Load goes on after the first worker left: the remaining two serve it.
            while len(answered) < before + 8 and not failed:
                await asyncio.sleep(0.1)
            done.set()
            await asyncio.wait_for(asyncio.gather(*clients), 120)
        assert not failed, failed
        assert len(answered) >= 8

        # A second signal cuts the grace short: the router would otherwise wait for the open stream.
        router = next(s for s in cluster.services if s.name == "router")
        async with grpc.aio.insecure_channel(cluster.grpc_addr) as channel:
            long = inference_pb2.GenerateRequest(
                messages=inference_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content="Tell a long story.")]),
                sampling=common_pb2.SamplingParams(max_tokens=2000, ignore_eos=True),
            )
            call = inference_pb2_grpc.InferenceStub(channel).GenerateStream(long, timeout=120)
            await anext(call.__aiter__())
            router.signal(signal.SIGTERM)
            await asyncio.to_thread(cluster.until, lambda: "shutdown_requested" in router.log_path.read_text(), 5, "SIGTERM heard")
            router.signal(signal.SIGTERM)
            sent = time.monotonic()
            code = await asyncio.to_thread(router.proc.wait, 10)
            assert code == 128 + signal.SIGTERM and time.monotonic() - sent <= STOP_WITHIN_S
            call.cancel()
        cluster.forget_stopped()



async def test_a_new_request_waits_out_a_scheduler_restart(tmp_path, model_store, nats_srv, redis_srv, smollm):
    """No scheduler answers for a moment (the only one restarts): the request is retried, not refused."""
    async with _running_cluster(tmp_path, model_store, nats_srv, redis_srv, smollm, 1) as cluster:
        scheduler = next(s for s in cluster.services if s.name == "scheduler")
        await asyncio.to_thread(scheduler.stop)
        cluster.forget_stopped()
        router = next(s for s in cluster.services if s.name == "router")
        asking = asyncio.create_task(asyncio.to_thread(_ask, cluster))
        await asyncio.to_thread(cluster.until, lambda: "submit_retrying" in router.log_path.read_text(), 10, "the router retrying")
        cluster.start_service("scheduler", "scheduler-2")
        assert "Paris" in await asyncio.wait_for(asking, 60)


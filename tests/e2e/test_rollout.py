"""Model versions in a running cluster: several models at once, hot swap under load, canary traffic,
and a corrupted artifact that is refused while the old version keeps serving."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import subprocess
import sys
import time
import uuid

import grpc
import httpx
import nats
import pytest

from llmserve.cli import infra
from llmserve.v1 import common_pb2, events_pb2, inference_pb2, inference_pb2_grpc, registry_pb2, registry_pb2_grpc
from tests.helpers.cluster import Cluster
from tests.helpers.registry import register, with_catalog

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="module")
def tiny2(redis_srv, model_store, smollm, tmp_path_factory):
    """A second tiny random Llama (other weights, so another artifact and checksum)."""
    from llmserve.registry.publish import publish_directory
    from tests.helpers.models import build_tiny_llama

    source = build_tiny_llama(tmp_path_factory.mktemp("tiny2") / "model", model_store / smollm.path, seed=1)
    return asyncio.run(
        with_catalog(redis_srv.url, "t2-" + uuid.uuid4().hex[:6] + ":", lambda c: publish_directory(c, model_store, "tiny-two", source))
    )


@pytest.fixture(scope="module")
def cluster(nats_srv, redis_srv, model_store, smollm, tmp_path_factory):
    prefix = "r" + uuid.uuid4().hex[:10]
    register(redis_srv.url, prefix, smollm)
    c = Cluster(nats_srv.url, redis_srv.url, prefix, model_store, tmp_path_factory.mktemp("rollout-logs"))
    c.extra_env.update(LLMSERVE_ADMIN_TOKEN=ADMIN_TOKEN, LLMSERVE_WORKER_DRAIN_GRACE_S="20")
    try:
        yield c.start(workers=1)
    finally:
        c.stop()


async def publish_as(cluster: Cluster, record, name: str | None = None):
    """Records an artifact already in the store as the next version of `name` in the cluster's registry."""
    return await with_catalog(cluster.redis_url, f"{cluster.prefix}:", lambda c: c.publish(name or record.name, record.path, record.sha256, "test"))


def start_worker(cluster: Cluster, model: str, **env: str):
    return cluster.start_service(
        "model_worker", f"worker-{model}-{uuid.uuid4().hex[:4]}", LLMSERVE_WORKER_MODEL=model,
        LLMSERVE_WORKER_METRICS_ADDR=f"127.0.0.1:{infra.free_port()}", **env,
    )


def stop_workers(cluster: Cluster, *workers) -> None:
    for worker in workers:
        worker.stop()
    cluster.forget_stopped()


class Beats:
    """Heartbeats and registry events of the test's cluster, as they arrive."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.latest: dict[str, events_pb2.Heartbeat] = {}
        self.refused: list[events_pb2.ModelRefused] = []
        self.changed = asyncio.Event()

    async def __aenter__(self) -> Beats:
        self.nc = await nats.connect(self.cluster.nats_url)

        async def on_beat(msg) -> None:
            beat = events_pb2.Heartbeat.FromString(msg.data)
            self.latest[beat.instance_id] = beat
            self.changed.set()

        async def on_refused(msg) -> None:
            self.refused.append(events_pb2.ModelRefused.FromString(msg.data))
            self.changed.set()

        await self.nc.subscribe(f"{self.cluster.prefix}.hb.worker.*", cb=on_beat)
        await self.nc.subscribe(f"{self.cluster.prefix}.events.model_refused", cb=on_refused)
        await self.nc.flush()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.nc.close()

    async def wait(self, predicate, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out waiting for {what}; beats: {list(self.latest.values())}"
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                pass

    def serving(self, model: str, version: int, settled: bool = True) -> bool:
        return any(
            b.model == model and b.model_version == version and b.ready and (not settled or not b.draining_versions)
            for b in self.latest.values()
        )


def request(model: str, rid: str, max_tokens: int = 8) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        request_id=rid, model=model, prompt="Hello there", sampling=common_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    )


async def versions_of(stub, req) -> set[int]:
    return {r.model_version async for r in stub.GenerateStream(req, timeout=60) if r.model_version}


def admin(cluster: Cluster, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{cluster.http_url}/admin/v1{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30, **kwargs)


def cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmserve.cli", "models", *args], env=cluster.env, capture_output=True, text=True, timeout=60
    )


async def test_several_models_are_served_and_listed_at_once(cluster, tiny):
    await publish_as(cluster, tiny)
    worker = start_worker(cluster, tiny.name)
    try:
        async with Beats(cluster) as beats:
            await beats.wait(lambda: beats.serving(tiny.name, 1), 120, "the tiny model's worker")
        listed = {m["id"] for m in httpx.get(f"{cluster.http_url}/v1/models", timeout=10).json()["data"]}
        assert {cluster.default_model, tiny.name} <= listed
        async with grpc.aio.insecure_channel(cluster.grpc_addr) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            models = {m.name: m for m in (await stub.ListModels(inference_pb2.ListModelsRequest(), timeout=10)).models}
            assert models[tiny.name].live_workers >= 1 and models[cluster.default_model].live_workers >= 1
            assert await versions_of(stub, request(tiny.name, "several-tiny")) == {1}
            assert await versions_of(stub, request(cluster.default_model, "several-default")) == {1}
    finally:
        stop_workers(cluster, worker)


async def test_promote_under_load_swaps_without_a_failed_request(cluster, tiny, tiny2):
    model = "swap"
    await publish_as(cluster, tiny, model)
    worker = start_worker(cluster, model)
    outcomes: list[tuple[float, set[int] | Exception]] = []
    stop = asyncio.Event()
    try:
        async with Beats(cluster) as beats, grpc.aio.insecure_channel(cluster.grpc_addr) as channel:
            await beats.wait(lambda: beats.serving(model, 1), 120, "the v1 worker")
            stub = inference_pb2_grpc.InferenceStub(channel)

            async def client(n: int) -> None:
                i = 0
                while not stop.is_set():
                    i += 1
                    started = time.monotonic()
                    try:
                        outcomes.append((started, await versions_of(stub, request(model, f"load-{n}-{i}", max_tokens=24))))
                    except Exception as exc:  # recorded: the test fails on any
                        outcomes.append((started, exc))

            clients = [asyncio.create_task(client(n)) for n in range(4)]
            await asyncio.sleep(1.0)  # load running on v1
            await publish_as(cluster, tiny2, model)
            response = admin(cluster, "POST", f"/models/{model}/promote", json={"version": 2})
            assert response.status_code == 200, response.text
            assert response.json()["action"] == "promote" and response.json()["version"] == 2
            await beats.wait(lambda: beats.serving(model, 2), 120, "the worker to serve v2 and unload v1")
            swapped = time.monotonic()
            await asyncio.sleep(1.5)  # load running on v2
            stop.set()
            await asyncio.wait_for(asyncio.gather(*clients), 60)
    finally:
        stop_workers(cluster, worker)
    failures = [o for _, o in outcomes if isinstance(o, Exception)]
    assert not failures, failures[:3]
    assert any(o == {1} for _, o in outcomes), "load ran on v1 before the swap"
    after = [o for started, o in outcomes if started > swapped]
    print(f"{len(outcomes)} requests, {len(after)} after the swap; during: {[o for _, o in outcomes if o not in ({1}, {2})]}")
    assert after and all(o == {2} for o in after), after


def binomial_interval(n: int, p: float, confidence: float = 0.99) -> tuple[int, int]:
    """The central interval holding `confidence` of Binomial(n, p)."""
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    tail = (1 - confidence) / 2
    low, acc = 0, 0.0
    while acc + pmf[low] <= tail:
        acc += pmf[low]
        low += 1
    high, acc = n, 0.0
    while acc + pmf[high] <= tail:
        acc += pmf[high]
        high -= 1
    return low, high


async def test_a_canary_at_weight_20_gets_a_binomial_share(cluster, tiny, tiny2):
    model = "canary-m"
    await publish_as(cluster, tiny, model)
    await publish_as(cluster, tiny2, model)
    stable_worker = start_worker(cluster, model)
    canary_worker = start_worker(cluster, model, LLMSERVE_WORKER_MODEL_VERSION="2")
    try:
        async with Beats(cluster) as beats, grpc.aio.insecure_channel(cluster.grpc_addr) as channel:
            await beats.wait(lambda: beats.serving(model, 1) and beats.serving(model, 2), 120, "both workers")
            async with grpc.aio.insecure_channel(f"127.0.0.1:{cluster.registry_port}") as reg_channel:
                registry = registry_pb2_grpc.RegistryStub(reg_channel)
                change = await registry.SetCanary(registry_pb2.SetCanaryRequest(name=model, version=2, weight=20, actor="test"), timeout=10)
                assert change.entry.action == "canary" and change.entry.weight == 20
            stub = inference_pb2_grpc.InferenceStub(channel)
            gate = asyncio.Semaphore(16)

            async def one(i: int) -> set[int]:
                async with gate:
                    return await versions_of(stub, request(model, uuid.uuid4().hex, max_tokens=1))

            served = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200))), 180)
    finally:
        stop_workers(cluster, stable_worker, canary_worker)
    assert all(len(s) == 1 for s in served)
    canary = sum(1 for s in served if s == {2})
    low, high = binomial_interval(200, 0.2)
    print(f"canary served {canary} of 200 (99% interval {low}-{high})")
    assert low <= canary <= high, (canary, low, high)


async def test_a_corrupted_artifact_is_refused_and_the_old_version_keeps_serving(cluster, tiny):
    model = "corrupt-m"
    await publish_as(cluster, tiny, model)
    # Version 2 claims tiny's checksum, but one byte of its weights differs.
    bad = f"{model}/tampered-{uuid.uuid4().hex[:6]}"
    shutil.copytree(cluster.model_store / tiny.path, cluster.model_store / bad)
    weights = cluster.model_store / bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    await with_catalog(cluster.redis_url, f"{cluster.prefix}:", lambda c: c.publish(model, bad, tiny.sha256, "tampered"))
    worker = start_worker(cluster, model)
    try:
        async with Beats(cluster) as beats, grpc.aio.insecure_channel(cluster.grpc_addr) as channel:
            await beats.wait(lambda: beats.serving(model, 1), 120, "the v1 worker")
            promoted = cli(cluster, "promote", model, "2")
            assert promoted.returncode == 0, promoted.stderr
            await beats.wait(lambda: any(r.model == model and r.version == 2 for r in beats.refused), 60, "the refusal")
            refusal = next(r for r in beats.refused if r.model == model)
            assert "checksum" in refusal.reason.lower() and refusal.serving_version == 1
            stub = inference_pb2_grpc.InferenceStub(channel)
            # Stable now names the refused version; the worker's v1 answers meanwhile.
            for i in range(3):
                assert await versions_of(stub, request(model, f"after-refusal-{i}")) == {1}
            assert beats.serving(model, 1)
        rolled = cli(cluster, "rollback", model)
        assert rolled.returncode == 0 and "rollback" in rolled.stdout, rolled.stderr
        shown = cli(cluster, "show", model)
        assert shown.returncode == 0 and "stable" in shown.stdout
    finally:
        stop_workers(cluster, worker)
        shutil.rmtree(cluster.model_store / bad, ignore_errors=True)


def test_admin_routes_need_the_token(cluster):
    denied = httpx.get(f"{cluster.http_url}/admin/v1/models", timeout=10)
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "permission_denied"
    listed = admin(cluster, "GET", "/models")
    assert listed.status_code == 200 and any(m["name"] == cluster.default_model for m in listed.json()["models"])
    missing = admin(cluster, "POST", "/models/nope/promote", json={"version": 1})
    assert missing.status_code == 404
    invalid = admin(cluster, "POST", f"/models/{cluster.default_model}/canary", json={"version": 1, "weight": 150})
    assert invalid.status_code == 400
    assert os.environ.get("LLMSERVE_ADMIN_TOKEN") is None  # the token only lives in the cluster's environment

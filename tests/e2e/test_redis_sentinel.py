"""The whole stack on Redis with Sentinel (a primary, a replica and three Sentinels on loopback): the
primary is killed mid-load. Streams and new requests keep being served (versions and tenant shares
come from what the services last read while the Sentinels switch), every registry change that was
answered as replicated is still there afterwards, and the registry takes changes again within 15 s."""

import asyncio
import threading
import time

import grpc
import openai
import pytest

from llmserve.registry.grpc_api import REPLICAS_METADATA
from llmserve.v1 import registry_pb2, registry_pb2_grpc
from tests.helpers.cluster import own_cluster
from tests.helpers.servers import redis_sentinel_group

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
QUESTIONS = ["Write a story about a lighthouse.", "Explain how bread is made.", "Describe a busy market.", "List facts about the ocean."]


@pytest.fixture(scope="module")
def sentinel_cluster(nats_srv, model_store, smollm, tmp_path_factory):
    work = tmp_path_factory.mktemp("sentinel")
    group = redis_sentinel_group(work / "redis")
    try:
        env = {"LLMSERVE_REDIS_SENTINELS": group.sentinel_spec, "LLMSERVE_REGISTRY_WAIT_REPLICAS": "1"}
        with own_cluster(nats_srv.url, group.primary.url, model_store, smollm, work / "logs", **env) as cluster:
            yield cluster, group
    finally:
        group.stop()


class RegistryWriter(threading.Thread):
    """Sets a tenant limit every 50 ms; remembers which changes were answered as replicated, and when
    the registry took a change again after failing."""

    def __init__(self, addr: str) -> None:
        super().__init__(daemon=True)
        self.stub = registry_pb2_grpc.RegistryStub(grpc.insecure_channel(addr))
        self.replicated: list[tuple[str, int]] = []
        self.failures: list[float] = []
        self.successes: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            limits = registry_pb2.TenantLimits(tenant=f"t{i % 7}", max_active=i)
            try:
                _, call = self.stub.SetTenantLimits.with_call(registry_pb2.SetTenantLimitsRequest(limits=limits, actor="test"), timeout=5)
                self.successes.append(time.monotonic())
                if int(dict(call.trailing_metadata()).get(REPLICAS_METADATA, "0")) >= 1:
                    self.replicated.append((limits.tenant, i))
            except grpc.RpcError:
                self.failures.append(time.monotonic())
            self.stop.wait(0.05)


async def stream(client: openai.AsyncOpenAI, question: str, max_tokens: int) -> str:
    response = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=max_tokens, stream=True,
        extra_body={"ignore_eos": True},
    )
    return "".join([c.choices[0].delta.content async for c in response if c.choices and c.choices[0].delta.content])


def test_the_stack_serves_through_a_redis_failover(sentinel_cluster):
    cluster, group = sentinel_cluster

    def new_client() -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{cluster.http_url}/v1", api_key="unused", max_retries=0, timeout=120)

    async def reference() -> list[str]:
        client = new_client()
        return await asyncio.gather(*(stream(client, q, 40) for q in QUESTIONS))

    undisturbed = asyncio.run(reference())
    writer = RegistryWriter(cluster.registry_addr)
    writer.start()

    async def under_failover() -> tuple[list[str], list[str], float]:
        client = new_client()
        streams = [asyncio.create_task(stream(client, q, 40)) for q in QUESTIONS]
        await asyncio.sleep(1.0)
        group.primary.kill()
        killed = time.monotonic()
        # New requests all through the switch: each must be served.
        short = []
        while time.monotonic() - killed < 12:
            short.append(await stream(client, "What is the capital of France?", 4))
            await asyncio.sleep(0.3)
        return await asyncio.gather(*streams), short, killed

    texts, short, killed = asyncio.run(under_failover())
    assert texts == undisturbed
    assert len(short) >= 10 and all(short)
    # The registry takes changes again within 15 s of the kill.
    cluster.until(lambda: any(t > killed and t > max([f for f in writer.failures if f > killed], default=0) for t in writer.successes),
                  30, "the registry took no change after the failover")
    back = min(t for t in writer.successes if t > max([f for f in writer.failures if f > killed], default=killed))
    writer.stop.set()
    writer.join(10)
    assert back - killed < 15, f"the registry took changes again {back - killed:.1f} s after the primary died"
    # Every change answered as replicated survived: each tenant's limit is its last replicated value or a later one.
    tenants = {t.tenant: t.max_active for t in writer.stub.ListTenants(registry_pb2.ListTenantsRequest(), timeout=5).tenants}
    last = {}
    for tenant, value in writer.replicated:
        last[tenant] = value
    assert last and all(tenants[tenant] >= value for tenant, value in last.items())

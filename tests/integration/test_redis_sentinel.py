"""The Redis client through Sentinels (real primary, replica and three Sentinels on loopback): it
finds the primary, and after the primary dies it follows the Sentinels to the promoted replica, where
a write the replica had acknowledged (WAIT) is still there."""

import asyncio
import time

import pytest

from llmserve.common.config import CommonSettings
from llmserve.common.redisio import SWITCHING_ERRORS, redis_client, replicated, sentinel_hosts
from tests.helpers.servers import redis_sentinel_group

pytestmark = pytest.mark.integration


def test_sentinel_addresses_parse():
    assert sentinel_hosts("a:1, b:26380,c") == [("a", 1), ("b", 26380), ("c", 26379)]


async def test_the_client_follows_a_failover_to_the_promoted_replica(tmp_path):
    group = redis_sentinel_group(tmp_path)
    try:
        client = redis_client(CommonSettings(redis_url="redis://127.0.0.1:1/0", redis_sentinels=group.sentinel_spec))
        await client.set("acknowledged", "yes")
        assert await client.wait(1, 5000) == 1
        group.primary.kill()
        killed = time.monotonic()
        while True:
            try:
                await client.set("after", "yes")
                break
            except SWITCHING_ERRORS:
                assert time.monotonic() - killed < 20, "no primary after 20 s"
                await asyncio.sleep(0.2)
        assert await client.get("acknowledged") == b"yes"
        replication = await client.info("replication")
        assert replication["role"] == "master"
        assert (await client.connection_pool.get_master_address())[1] == group.replica.host_port[1]
        await client.aclose()
    finally:
        group.stop()


async def test_replicated_counts_the_replicas_that_have_every_write(tmp_path):
    group = redis_sentinel_group(tmp_path)
    try:
        client = redis_client(CommonSettings(redis_url="redis://127.0.0.1:1/0", redis_sentinels=group.sentinel_spec))
        # Writes over several pooled connections, then one question: the replica has all of them.
        await asyncio.gather(*(client.set(f"k{i}", i) for i in range(20)))
        assert await replicated(client, 1, 5.0) == 1
        # With the replica stopped, nothing acknowledges a new write: the wait ends at its timeout.
        group.replica.kill()
        await client.set("unreplicated", 1)
        started = time.monotonic()
        assert await replicated(client, 1, 0.5) == 0
        assert time.monotonic() - started >= 0.5
        await client.aclose()
    finally:
        group.stop()

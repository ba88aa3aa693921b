import asyncio

import pytest

from llmserve.common.errors import ServiceError
from llmserve.v1 import events_pb2

pytestmark = pytest.mark.integration


async def test_first_version_becomes_stable_and_numbers_increase(catalog):
    v1 = await catalog.publish("m", "m/a", "a" * 64, "test")
    v2 = await catalog.publish("m", "m/b", "b" * 64, "test")
    assert (v1.version, v2.version) == (1, 2)
    assert await catalog.resolve("m") == 1
    assert list((await catalog.get("m", 1)).aliases) == ["stable"]
    v3 = await catalog.publish("m", "m/c", "c" * 64, "test", make_stable=True)
    assert await catalog.resolve("m", "stable") == v3.version == 3
    assert await catalog.model_names() == ["m"]


async def test_concurrent_publishes_never_share_a_version(catalog):
    records = await asyncio.gather(*(catalog.publish("m", f"m/{i}", f"{i:064d}", "test") for i in range(20)))
    assert sorted(r.version for r in records) == list(range(1, 21))


async def test_unknown_model_alias_and_version_are_not_found(catalog):
    await catalog.publish("m", "m/a", "a" * 64, "test")
    for call in (catalog.resolve("nope"), catalog.resolve("m", "canary"), catalog.get("m", 9)):
        with pytest.raises(ServiceError) as err:
            await call
        assert err.value.code == events_pb2.ERROR_CODE_NOT_FOUND


async def test_bad_model_name_is_refused(catalog):
    with pytest.raises(ServiceError):
        await catalog.publish("a.b", "x", "a" * 64, "test")


async def test_every_publish_is_audited(catalog, redis_client, keys):
    await catalog.publish("m", "m/a", "a" * 64, "test", actor="alice")
    entries = await redis_client.xrange(keys.audit)
    assert len(entries) == 1
    fields = {k.decode(): v.decode() for k, v in entries[0][1].items()}
    assert fields["action"] == "publish" and fields["actor"] == "alice" and fields["version"] == "1"


async def test_a_number_handed_out_before_is_never_handed_out_again(catalog, redis_client, keys):
    first = await catalog.publish("m", "m/1", "a" * 64, "test")
    second = await catalog.publish("m", "m/2", "b" * 64, "test")
    # A failed-over Redis lost the second publish's counter: the next number still follows the one the
    # caller knows was handed out.
    await redis_client.set(keys.version_counter("m"), first.version)
    third = await catalog.publish("m", "m/3", "c" * 64, "test", after=second.version)
    assert third.version == second.version + 1

"""Per-key limits on a real Redis, shared by two limiters as by two routers."""

import pytest

from llmserve.common.errors import ServiceError
from llmserve.common.rate_limits import RateLimiter

pytestmark = pytest.mark.integration


async def test_two_routers_share_one_requests_per_minute_budget(redis_client, keys):
    first, second = RateLimiter(redis_client, keys), RateLimiter(redis_client, keys)
    for limiter in (first, second, first):
        await limiter.admit("k1", "t", requests_per_minute=3, tokens_per_minute=0)
    with pytest.raises(ServiceError) as err:
        await second.admit("k1", "t", requests_per_minute=3, tokens_per_minute=0)
    assert err.value.reason == "requests_per_minute" and err.value.http_status == 429
    # Three requests spent the minute; the next unit frees one interval (60 / 3 s) after the first.
    assert 19.0 < err.value.retry_after_s <= 20.0
    await first.admit("k2", "t", requests_per_minute=3, tokens_per_minute=0)  # another key is not affected


async def test_tokens_are_charged_after_the_fact_and_a_key_in_debt_waits(redis_client, keys):
    limiter = RateLimiter(redis_client, keys)
    await limiter.admit("k", "t", requests_per_minute=0, tokens_per_minute=600)
    await limiter.charge_tokens("k", 600, 900)  # 300 tokens over the minute: 30 s of debt at 10 tokens/s
    with pytest.raises(ServiceError) as err:
        await limiter.admit("k", "t", requests_per_minute=0, tokens_per_minute=600)
    assert err.value.reason == "tokens_per_minute" and 29.0 < err.value.retry_after_s <= 30.2
    # The token budget is checked before a request unit is taken.
    with pytest.raises(ServiceError) as err:
        await limiter.admit("k", "t", requests_per_minute=1, tokens_per_minute=600)
    assert err.value.reason == "tokens_per_minute"
    await limiter.admit("fresh", "t", requests_per_minute=1, tokens_per_minute=600)

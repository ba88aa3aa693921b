"""Per-key requests-per-minute and tokens-per-minute limits, shared by every router through Redis.

Each limit is a GCRA bucket (the "generic cell rate algorithm", a token bucket kept as one number):
Redis stores the bucket's theoretical arrival time `tat`. A unit of a limit of N per minute costs
60/N seconds of it; a bucket may run up to 60 s ahead of now, so a key may spend a whole minute's
allowance at once and then one unit per 60/N seconds. One Lua script reads and moves `tat`
atomically, so any number of routers share one budget without a race.

- Requests: each request takes one unit at admission, or is refused with the time until one is free.
- Tokens: prompt and completion tokens are only known at the end, so a request is admitted while
  the bucket is not over its minute and its real token count is charged when it ends (the bucket
  may go into debt; later requests wait for it to pay back). This is how a budget of tokens per
  minute holds over time without guessing a request's length up front.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from llmserve.common.errors import ServiceError
from llmserve.common.keys import RedisKeys

WINDOW_S = 60.0

# KEYS: the bucket. ARGV: now, seconds per unit, window, cost, mode ("take", "check" or "charge").
# Returns {admitted (1/0), seconds until admitted (as text)}.
_GCRA = """
local now = tonumber(ARGV[1])
local interval, window, cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
if tat < now then tat = now end
local new_tat = tat + cost * interval
if ARGV[5] ~= 'charge' and new_tat - now > window then
  return {0, tostring(new_tat - now - window)}
end
if ARGV[5] == 'check' then
  return {1, '0'}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return {1, '0'}
"""


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self._keys = keys
        self._script = redis.register_script(_GCRA)

    async def _run(self, key_id: str, limit: str, per_minute: int, cost: int, mode: str) -> float:
        """Seconds until the bucket admits `cost` units (0: admitted)."""
        admitted, wait = await self._script(
            keys=[self._keys.rate_limit(key_id, limit)],
            args=[f"{time.time():.6f}", f"{WINDOW_S / per_minute:.9f}", f"{WINDOW_S:.3f}", cost, mode],
        )
        return 0.0 if int(admitted) else float(wait)

    async def admit(self, key_id: str, tenant: str, requests_per_minute: int, tokens_per_minute: int) -> None:
        """Takes one request from the key's budget, or raises RESOURCE_EXHAUSTED with the time to wait.

        The token budget is checked first and not charged here, so a request refused for tokens does
        not spend a request unit either."""
        if tokens_per_minute:
            wait = await self._run(key_id, "tokens", tokens_per_minute, 1, "check")
            if wait:
                raise _exhausted(f"tokens per minute ({tokens_per_minute})", tenant, wait, "tokens_per_minute")
        if requests_per_minute:
            wait = await self._run(key_id, "requests", requests_per_minute, 1, "take")
            if wait:
                raise _exhausted(f"requests per minute ({requests_per_minute})", tenant, wait, "requests_per_minute")

    async def charge_tokens(self, key_id: str, tokens_per_minute: int, tokens: int) -> None:
        if tokens_per_minute and tokens > 0:
            await self._run(key_id, "tokens", tokens_per_minute, tokens, "charge")


def _exhausted(what: str, tenant: str, wait_s: float, reason: str) -> ServiceError:
    return ServiceError.exhausted(
        f"tenant {tenant!r} is over its API key's {what}; retry in {wait_s:.1f} s", retry_after_s=wait_s, reason=reason
    )

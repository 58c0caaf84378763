"""Rate limits: two token buckets per request (the tenant's and the token's), kept in Redis
so every router replica draws from the same buckets.

One script call checks both buckets and takes a token from each only when both have
one; the answer is 0 or how many milliseconds to wait (``Retry-After``). The pull
fast path sends the call in the same write as its read, so limiting costs no extra
round trip.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import hiredis

from fabric.router.fastredis import FastRedis
from fabric.security.tokens import Principal
from fabric.settings import SecuritySettings

_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = 0
local left = {}
for i = 1, #KEYS do
  local rate, burst = tonumber(ARGV[i * 2 - 1]), tonumber(ARGV[i * 2])
  local b = redis.call('HMGET', KEYS[i], 't', 'at')
  local tokens = tonumber(b[1]) or burst
  local at = tonumber(b[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
  if tokens < 1 then
    wait = math.max(wait, math.ceil((1 - tokens) * 1000 / rate))
  end
  left[i] = tokens
end
if wait > 0 then return wait end
for i = 1, #KEYS do
  local rate, burst = tonumber(ARGV[i * 2 - 1]), tonumber(ARGV[i * 2])
  redis.call('HSET', KEYS[i], 't', tostring(left[i] - 1), 'at', now)
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst * 1000 / rate) + 1000)
end
return 0
"""
SHA = hashlib.sha1(_LUA.encode()).hexdigest()


class RateLimited(Exception):
    def __init__(self, wait_ms: int) -> None:
        super().__init__(f"rate limit exceeded; retry in {wait_ms} ms")
        self.wait_ms = wait_ms

    @property
    def retry_after(self) -> str:
        """Whole seconds, as ``Retry-After`` wants, never 0."""
        return str(max(1, math.ceil(self.wait_ms / 1000)))


class RateLimiter:
    def __init__(self, fast: FastRedis, key_prefix: str, sec: SecuritySettings) -> None:
        self.fast = fast
        self.prefix = key_prefix
        self.sec = sec

    def command(self, who: Principal) -> tuple[Any, ...]:
        """The script call for one request of ``who``; pair its reply with ``raise_if_limited``."""
        t = self.sec.rate_for(who.tenant)
        k = self.sec.token_rate
        return (
            "EVALSHA", SHA, 2, f"{self.prefix}:{{{who.tenant}}}:rl", f"{self.prefix}:{{{who.tenant}}}:rl:tok:{who.token_id}",
            t.rate, t.burst, k.rate, k.burst,
        )  # fmt: skip

    async def load(self) -> None:
        await self.fast.execute("SCRIPT", "LOAD", _LUA)

    async def check(self, who: Principal) -> None:
        """Take a token for one request of ``who``; raises RateLimited."""
        try:
            wait = await self.fast.execute(*self.command(who))
        except hiredis.ReplyError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
            await self.load()  # Redis restarted or its scripts were flushed
            wait = await self.fast.execute(*self.command(who))
        raise_if_limited(wait)


def raise_if_limited(wait: Any) -> None:
    if wait:
        raise RateLimited(int(wait))

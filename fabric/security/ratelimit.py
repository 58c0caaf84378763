"""Rate limits: two token buckets per request (the tenant's and the token's), kept in Redis
so every router replica draws from the same buckets.

One script call checks both buckets and takes tokens from each only when both have
them; the answer is how many were granted, or how many milliseconds to wait
(``Retry-After``). A router takes a lease at a time and serves from it locally for at
most 100 ms: one token for a caller it has not seen lately, doubling while the
caller uses up its leases, up to 100 tokens (about 50 ms of the rate, never more
than a twentieth of the burst). A busy caller costs one Redis call per lease instead
of one per request; a caller seen once takes one token, as it would without leases. Leased tokens are taken from the shared
bucket before they are used, so replicas together never exceed the limit. Renewals
running at once add up (none overwrites another), and an unused remainder that
lapses goes back to the buckets with the next renewal, so a caller under its limit
is not refused for tokens a router took and never used. The pull fast path sends the call in the same write as its
read, so even a lease renewal costs no extra round trip.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

import hiredis

from fabric.cache.fastredis import Pipelined
from fabric.errors import RateLimited
from fabric.security.tokens import Principal
from fabric.settings import SecuritySettings

LEASE_S = 0.1
MAX_LEASE = 100

_LUA = """
-- KEYS: the buckets; ARGV: rate and burst per bucket, then how many tokens are wanted,
-- then how many a lapsed lease gives back unused.
-- Returns {granted, wait_ms}: granted is at most what every bucket holds.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local grant = tonumber(ARGV[#KEYS * 2 + 1])
local back = tonumber(ARGV[#KEYS * 2 + 2]) or 0
local wait = 0
local left = {}
for i = 1, #KEYS do
  local rate, burst = tonumber(ARGV[i * 2 - 1]), tonumber(ARGV[i * 2])
  local b = redis.call('HMGET', KEYS[i], 't', 'at')
  local tokens = tonumber(b[1]) or burst
  local at = tonumber(b[2]) or now
  tokens = math.min(burst, tokens + back + math.max(0, now - at) * rate / 1000)
  if tokens < 1 then
    wait = math.max(wait, math.ceil((1 - tokens) * 1000 / rate))
  end
  grant = math.min(grant, math.floor(tokens))
  left[i] = tokens
end
if grant < 1 then
  if back > 0 then
    for i = 1, #KEYS do redis.call('HSET', KEYS[i], 't', tostring(left[i]), 'at', now) end
  end
  return {0, wait}
end
for i = 1, #KEYS do
  local rate, burst = tonumber(ARGV[i * 2 - 1]), tonumber(ARGV[i * 2])
  redis.call('HSET', KEYS[i], 't', tostring(left[i] - grant), 'at', now)
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst * 1000 / rate) + 1000)
end
return {grant, 0}
"""
SHA = hashlib.sha1(_LUA.encode()).hexdigest()


def limited(wait_ms: int) -> RateLimited:
    return RateLimited(f"rate limit exceeded; retry in {wait_ms} ms", math.ceil(wait_ms / 1000))


def lease_size(rate: float, burst: int) -> int:
    return max(1, min(MAX_LEASE, int(rate * LEASE_S / 2), burst // 20))


class RateLimiter:
    def __init__(self, fast: Pipelined, key_prefix: str, sec: SecuritySettings) -> None:
        self.fast = fast
        self.prefix = key_prefix
        self.sec = sec
        #: (tenant, token id) -> [tokens left, lapses at (monotonic), size of the lease]
        self.leases: dict[tuple[str, str], list[float]] = {}

    def take_local(self, who: Principal) -> bool:
        """Take a token from this router's lease, if it holds one."""
        lease = self.leases.get((who.tenant, who.token_id))
        if lease is not None and lease[0] >= 1 and lease[1] > time.monotonic():
            lease[0] -= 1
            return True
        return False

    def command(self, who: Principal) -> tuple[Any, ...]:
        """The script call renewing ``who``'s lease; pass its reply to ``settle``. What is
        left of a lapsed lease goes back to the buckets in the same call."""
        t = self.sec.rate_for(who.tenant)
        k = self.sec.token_rate
        cap = min(lease_size(t.rate, t.burst), lease_size(k.rate, k.burst))
        now = time.monotonic()
        last = self.leases.get((who.tenant, who.token_id))
        # slow start: double while the caller keeps using its leases up in time
        want = min(cap, int(last[2]) * 2) if last is not None and last[1] > now - 1 else 1
        back = 0
        if last is not None and last[1] <= now and last[0] >= 1:
            back, last[0] = int(last[0]), 0
        return (
            "EVALSHA", SHA, 2, f"{self.prefix}:{{{who.tenant}}}:rl", f"{self.prefix}:{{{who.tenant}}}:rl:tok:{who.token_id}",
            t.rate, t.burst, k.rate, k.burst, want, back,
        )  # fmt: skip

    def settle(self, who: Principal, reply: Any) -> None:
        """Add the granted lease to what this router holds for ``who`` (less the token this
        request uses), or raise RateLimited. Renewals that ran at once all add up: none
        overwrites another, so no token taken from the buckets is lost."""
        granted, wait = int(reply[0]), int(reply[1])
        if granted < 1:
            raise limited(max(1, wait))
        if len(self.leases) > 100_000:
            self.leases.clear()
        now = time.monotonic()
        lease = self.leases.get((who.tenant, who.token_id))
        if lease is None:
            self.leases[who.tenant, who.token_id] = [granted - 1, now + LEASE_S, granted]
        else:
            kept = lease[0] if lease[1] > now else 0  # a lapsed remainder went back with the renewal
            lease[:] = [kept + granted - 1, now + LEASE_S, max(granted, lease[2])]

    async def load(self) -> None:
        await self.fast.execute("SCRIPT", "LOAD", _LUA)

    async def many(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send commands that include this limiter's script call (``command``) in one write,
        loading the script again if Redis lost it (restarted, or its scripts were flushed)."""
        try:
            return await self.fast.many(*commands)
        except hiredis.ReplyError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
            await self.load()
            return await self.fast.many(*commands)

    async def check(self, who: Principal) -> None:
        """Take a token for one request of ``who``; raises RateLimited."""
        if self.take_local(who):
            return
        [reply] = await self.many(self.command(who))
        self.settle(who, reply)

"""The change hub on the real Redis: subscribers with tiny queues, a bursty feed, and
readers of different speeds. Whoever falls behind catches up from the feed and rejoins
the live fan-out; every subscriber gets every change once, in feed order."""

from __future__ import annotations

import asyncio
import random
import uuid

import orjson
import pytest
import redis.asyncio as aioredis

from fabric.cache.keys import CacheKeys
from fabric.dev.stack import Stack
from fabric.events.catalogue import Catalogue
from fabric.router.hub import ChangeHub, Subscriber
from fabric.security.tokens import Principal
from fabric.settings import Settings

pytestmark = pytest.mark.integration


async def write(r: aioredis.Redis, feed: str, start: int, count: int) -> None:
    """``count`` changes in one burst, the way the materializer writes them."""
    async with r.pipeline(transaction=False) as p:
        for n in range(start, start + count):
            event = {"type": "log.entry", "data": {"attributes": {"n": n}}}
            p.xadd(feed, {"ct": "LogEntry", "type": "log.entry", "subject": f"s{n % 7}", "seq": n, "at": 0,
                          "v": orjson.dumps(event), "sens": 1})  # fmt: skip
        await p.execute()


async def read(sub: Subscriber, total: int, pause: float) -> tuple[list[int], list[dict[str, object]]]:
    numbers: list[int] = []
    notices: list[dict[str, object]] = []
    while len(numbers) < total:
        msg = orjson.loads(await sub.next())
        if "event" in msg:
            numbers.append(msg["event"]["data"]["attributes"]["n"])
            if pause and len(numbers) % 50 == 0:
                await asyncio.sleep(pause)
        else:
            notices.append(msg)
    return numbers, notices


async def test_bursts_past_the_queue_lose_nothing(stack: Stack, stack_settings: Settings) -> None:
    r = aioredis.from_url(stack_settings.redis.url)
    keys = CacheKeys(f"hub{uuid.uuid4().hex[:6]}")
    catalogue = Catalogue.load(stack_settings.schemas_dir)
    assert "LogEntry" in catalogue.context_types
    hub = ChangeHub(r, keys, catalogue, buffer=20, block_ms=20)
    tenant = "acme"
    feed = keys.changes(tenant)
    total = 3_000
    try:
        who = Principal(tenant, "x", frozenset(), frozenset(), 1e12, "t")
        fast, slow = hub.subscriber(who, ["log.*"]), hub.subscriber(who, ["log.*"])
        await hub.join(fast)
        await hub.join(slow)
        readers = [asyncio.create_task(read(fast, total, 0)), asyncio.create_task(read(slow, total, 0.01))]
        rng = random.Random(7)
        sent = 0
        late: Subscriber | None = None
        while sent < total:
            burst = min(total - sent, rng.choice([1, 5, 60, 400]))  # some far past a queue of 20
            await write(r, feed, sent, burst)
            sent += burst
            if late is None and sent > total // 2:
                # one more resumes from the first change: catches up while the others are live
                late = hub.subscriber(who, ["log.*"])
                await hub.resume(late, "0-0")
                readers.append(asyncio.create_task(read(late, total, 0.002)))
            await asyncio.sleep(rng.choice([0, 0.005, 0.05]))
        results = await asyncio.wait_for(asyncio.gather(*readers), 60)
        for numbers, notices in results:
            assert numbers == list(range(total)), "every change once, in feed order"
            assert not [n for n in notices if "gap" in n], notices
        slow_notices = results[1][1]
        assert [n for n in slow_notices if n.get("lagging")], "the slow reader fell behind and was told"
        for s in (fast, slow, late):
            assert s is not None
            hub.unsubscribe(s)
        assert tenant not in hub.tenants and feed not in hub.positions, "nothing kept for a tenant nobody reads"
        print(f"\nslow reader fell behind {slow.fell_behind} times; fast {fast.fell_behind}")
    finally:
        await hub.stop()
        await r.delete(feed)
        await r.aclose()


async def test_a_position_past_retention_is_told_of_the_gap_then_goes_on(
    stack: Stack, stack_settings: Settings
) -> None:  # fmt: skip
    r = aioredis.from_url(stack_settings.redis.url)
    keys = CacheKeys(f"hub{uuid.uuid4().hex[:6]}")
    hub = ChangeHub(r, keys, Catalogue.load(stack_settings.schemas_dir), buffer=5, block_ms=20)
    feed = keys.changes("acme")
    try:
        await write(r, feed, 0, 10)
        entries: list[tuple[bytes, object]] = await r.xrange(feed)  # type: ignore[assignment]
        await r.xtrim(feed, minid=entries[4][0], approximate=False)  # 0..3 are gone
        sub = hub.subscriber(Principal("acme", "x", frozenset(), frozenset(), 1e12, "t"), ["*"])
        await hub.resume(sub, entries[1][0].decode())
        numbers, notices = await asyncio.wait_for(read(sub, 6, 0), 10)
        assert numbers == list(range(4, 10))
        assert [n for n in notices if "gap" in n], notices
        hub.unsubscribe(sub)
    finally:
        await hub.stop()
        await r.delete(feed)
        await r.aclose()

"""Resumable push through the consumer SDK: a subscriber that drops off while 10,000 changes
flow comes back with its resume token and ends with exactly what it missed, in order."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from typing import Any

import httpx
import orjson
import pytest

from fabric.client import ContextClient, Update
from fabric.testing import bearer
from tests.integration.conftest import Fabric, eventually

pytestmark = pytest.mark.integration

TOTAL = 10_000
BATCH = 250


def log(tenant: str, n: int) -> dict[str, Any]:
    return {
        "id": f"resume-{n}-{uuid.uuid4().hex[:6]}", "source": "svc://api", "type": "log.entry",
        "subject": f"svc-{n % 20}", "tenant": tenant,
        "data": {"service": f"svc-{n % 20}", "level": "INFO", "message": "tick", "attributes": {"n": n}},
    }  # fmt: skip


def entry(resume: str) -> tuple[int, int]:
    ms, _, seq = resume.partition("-")
    return int(ms), int(seq)


async def test_reconnect_with_resume_token_gets_exactly_what_was_missed(fabric: Fabric, tenant: str) -> None:
    token = bearer(fabric.settings, tenant)["Authorization"].removeprefix("Bearer ")
    first: list[Update] = []
    second: list[Update] = []
    async with ContextClient(fabric.url, token) as client, httpx.AsyncClient(base_url=fabric.url) as http:

        async def until_dropped() -> None:
            async with contextlib.aclosing(client.subscribe(["log.*"])) as updates:
                async for update in updates:
                    first.append(update)
                    if len(first) >= 2_000:
                        return  # closing the generator closes the connection

        reader = asyncio.create_task(until_dropped())
        await eventually(lambda: any("subscribed" in n for n in client.notices))

        posted = [0]

        async def flow(start: int, end: int) -> None:
            for at in range(start, end, BATCH):
                batch = [log(tenant, n) for n in range(at, at + BATCH)]
                r = await http.post("/v1/events", json=batch, headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 202, r.text
                posted[0] = at + BATCH
                await asyncio.sleep(0.05)

        # the subscriber drops after 2,000 of the first 4,000; the other 6,000 are posted
        # while it is away (and the first part may still be arriving)
        await flow(0, 4_000)
        await asyncio.wait_for(reader, 60)
        producer = asyncio.create_task(flow(4_000, TOTAL))
        await eventually(lambda: posted[0] >= 4_000 + 5 * BATCH, timeout=30, interval=0.05)  # it resumes mid-flow

        async def resumed() -> None:
            async with contextlib.aclosing(client.subscribe(["log.*"], resume=first[-1].resume)) as updates:
                async for update in updates:
                    second.append(update)
                    if len(first) + len(second) >= TOTAL:
                        return

        try:
            await asyncio.wait_for(resumed(), 90)
        except TimeoutError:
            raise AssertionError(
                f"resumed with {len(first)} + {len(second)} of {TOTAL}; notices {client.notices[-5:]}"
            ) from None
        await producer

    numbers = [u.event["data"]["attributes"]["n"] for u in first + second]
    assert len(numbers) == TOTAL and sorted(numbers) == list(range(TOTAL)), "missing or doubled changes"
    resumes = [entry(u.resume) for u in first + second]
    assert all(a < b for a, b in itertools.pairwise(resumes)), "out of feed order"
    # within a subject the order is the order they were sent in
    for s in range(20):
        mine = [n for n in numbers if n % 20 == s]
        assert mine == sorted(mine)
    # falling behind in a burst is allowed (it catches up from the feed); a gap is not
    assert not [n for n in client.notices if "gap" in n], client.notices
    print(f"\nfirst connection {len(first)} changes, resumed {len(second)}")


async def test_resume_token_past_the_retention_window_is_told_of_the_gap(
    fabric: Fabric, tenant: str
) -> None:  # fmt: skip
    """A token older than what the feed still holds gets a gap notice, then the rest."""
    import redis.asyncio as aioredis

    token = bearer(fabric.settings, tenant)["Authorization"].removeprefix("Bearer ")
    async with ContextClient(fabric.url, token) as client, httpx.AsyncClient(base_url=fabric.url) as http:
        r = await http.post("/v1/events", json=[log(tenant, n) for n in range(30)],
                            headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert r.status_code == 202
        feed = f"{fabric.settings.redis.key_prefix}:{{{tenant}}}:changes"
        r_ = aioredis.from_url(fabric.settings.redis.url)
        try:
            await eventually(lambda: _length(r_, feed, 30))
            entries: Any = await r_.xrange(feed, count=30)
            stale_token = entries[0][0].decode()
            expected = [orjson.loads(f[b"v"])["data"]["attributes"]["n"] for _, f in entries[4:]]
            await r_.xtrim(feed, minid=entries[4][0], approximate=False)  # as retention would: the first 4 are gone
        finally:
            await r_.aclose()
        got: list[Update] = []
        async for update in client.subscribe(["log.*"], resume=stale_token):
            got.append(update)
            if len(got) == 26:
                break
        assert [n for n in client.notices if "gap" in n], client.notices
        assert [u.event["data"]["attributes"]["n"] for u in got] == expected


async def _length(r: Any, key: str, n: int) -> bool:
    return bool(await r.xlen(key) >= n)

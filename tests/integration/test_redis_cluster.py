"""The fabric on a three-master Redis Cluster: tenants whose keys live on different
masters pull, get pushes, resume and are rate limited as on one node, and go on
after their slot moves to another master."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.crc import key_slot

from fabric.client import ContextClient, NotFound, Update
from fabric.dev.stack import Stack
from fabric.settings import RateLimit, Settings
from fabric.testing import bearer
from tests.integration.conftest import eventually, start_fabric, variant
from tests.integration.redis_cluster import PASSWORD, move_slot, owner_of, redis_cluster, url
from tests.integration.test_spine import page_event

pytestmark = pytest.mark.integration


def tenants_on_each_master(masters: int) -> list[str]:
    """One tenant name per master (``redis-cli --cluster create`` splits the slots evenly)."""
    found: dict[int, str] = {}
    while len(found) < masters:
        name = f"tn{uuid.uuid4().hex[:8]}"
        found.setdefault(key_slot(f"{{{name}}}".encode()) * masters // 16384, name)
    return [found[i] for i in range(masters)]


async def _pulled(client: ContextClient, subject: str) -> Any:
    try:
        return await client.get("PageDSL", subject)
    except NotFound:
        return None


async def test_pull_push_resume_and_rate_limits_on_a_redis_cluster(
    stack: Stack, stack_settings: Settings, tmp_path: Path
) -> None:  # fmt: skip
    with redis_cluster(tmp_path / "cluster") as ports:
        tenants = tenants_on_each_master(len(ports))
        limited = tenants[1]
        base = variant(stack_settings, tmp_path / "fabric")
        s = base.model_copy(update={
            "redis": base.redis.model_copy(update={"url": url(ports[0]), "cluster": True}),
            "security": base.security.model_copy(update={
                "tenant_rates": {limited: RateLimit(rate=2, burst=60)}, "token_rate": RateLimit(rate=1000, burst=1000),
            }),
        })  # fmt: skip
        fab = start_fabric(s)
        try:
            async with contextlib.AsyncExitStack() as stack_:
                http = await stack_.enter_async_context(httpx.AsyncClient(base_url=fab.url, timeout=15))
                clients = {
                    t: await stack_.enter_async_context(
                        ContextClient(fab.url, bearer(s, t)["Authorization"].removeprefix("Bearer "))
                    )
                    for t in tenants
                }
                pushed: dict[str, list[Update]] = {t: [] for t in tenants}

                async def listen(t: str) -> None:
                    async with contextlib.aclosing(clients[t].subscribe(["page.*"])) as updates:
                        async for u in updates:
                            pushed[t].append(u)

                listeners = [asyncio.create_task(listen(t)) for t in tenants]
                await eventually(lambda: all(any("subscribed" in n for n in clients[t].notices) for t in tenants))

                # each tenant posts pages; every one is pulled and pushed, in order
                for t in tenants:
                    batch = [page_event(t, f"p{i}", 1, f"title {i}") for i in range(20)]
                    r = await http.post("/v1/events", json=batch, headers=bearer(s, t))
                    assert r.status_code == 202, r.text
                await eventually(lambda: all(len(pushed[t]) >= 20 for t in tenants))
                for t in tenants:
                    assert sorted(u.subject for u in pushed[t]) == sorted(f"p{i}" for i in range(20))  # (4 partitions)
                    assert {u.event["tenant"] for u in pushed[t]} == {t}
                    page = await clients[t].get("PageDSL", "p7")
                    assert page.event["data"]["title"] == "title 7"
                for task in listeners:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

                # resume: the first tenant comes back with its last token and gets what it missed
                t0 = tenants[0]
                token = pushed[t0][-1].resume
                r = await http.post("/v1/events", json=[page_event(t0, f"q{i}", 1) for i in range(15)],
                                    headers=bearer(s, t0))  # fmt: skip
                assert r.status_code == 202
                missed: list[Update] = []

                async def resumed() -> None:
                    async with contextlib.aclosing(clients[t0].subscribe(["page.*"], resume=token)) as updates:
                        async for u in updates:
                            missed.append(u)
                            if len(missed) == 15:
                                return

                await asyncio.wait_for(resumed(), 30)
                assert sorted(u.subject for u in missed) == sorted(f"q{i}" for i in range(15))

                # rate limits: the limited tenant's bucket empties; the others are not touched
                statuses = []
                started = time.monotonic()
                for i in range(100):
                    resp = await http.get(f"/v1/contexts/PageDSL/p{i % 20}", headers=bearer(s, limited))
                    statuses.append(resp.status_code)
                refill = 2 * (time.monotonic() - started)
                allowed = [c for c in statuses if c != 429]
                assert set(allowed) == {200}
                # 60 in the bucket (some spent on the tenant's earlier requests), refilled at 2/s
                assert 20 <= len(allowed) <= 60 + refill + 1, statuses
                assert 429 in statuses
                other = await http.get("/v1/contexts/PageDSL/p1", headers=bearer(s, tenants[2]))
                assert other.status_code == 200

                # the data really is spread over the three masters
                for port in ports:
                    with redis.Redis(host="127.0.0.1", port=port, password=PASSWORD) as node:
                        assert node.dbsize() > 0, f"no keys on the master at {port}"

                # resharding: the first tenant's slot moves to another master with its keys;
                # the router's clients follow MOVED, the materializer and the hub go on
                slot = key_slot(f"{{{t0}}}".encode())
                here, _ = owner_of(ports, slot)
                move_slot(ports, slot, next(p for p in ports if p != here))
                assert owner_of(ports, slot)[0] != here
                assert (await clients[t0].get("PageDSL", "p7")).event["data"]["title"] == "title 7"
                moved: list[Update] = []

                async def after_the_move() -> None:
                    async with contextlib.aclosing(clients[t0].subscribe(["page.*"])) as updates:
                        async for u in updates:
                            moved.append(u)
                            return

                listener = asyncio.create_task(after_the_move())
                await eventually(lambda: sum("subscribed" in n for n in clients[t0].notices) >= 3)
                r = await http.post("/v1/events", json=page_event(t0, "after-move", 1, "moved"), headers=bearer(s, t0))
                assert r.status_code == 202
                await asyncio.wait_for(listener, 30)
                assert moved[0].subject == "after-move"
                page = await eventually(lambda: _pulled(clients[t0], "after-move"))
                assert page.event["data"]["title"] == "moved"
        finally:
            fab.stop()

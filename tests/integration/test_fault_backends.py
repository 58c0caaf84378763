"""Redis lost and the broker paused, on a stack of this module's own (the faults would
disturb other tests): the cache is rebuilt from Kafka, producers never drop silently."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from fabric.cache.keys import CacheKeys
from fabric.dev.stack import Stack
from fabric.errors import PublishError
from fabric.providers import Provider
from fabric.settings import ClickHouseSettings, KafkaSettings, RedisSettings, RouterSettings, Settings
from fabric.testing import bearer
from tests.integration.conftest import BROKER, Fabric, eventually, free_port, start_fabric

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Settings]]:
    data = tmp_path_factory.mktemp("faults")
    s = Settings(
        data_dir=data,
        kafka=KafkaSettings(
            bootstrap=f"127.0.0.1:{free_port()}",
            controller_port=free_port(),
            topic_prefix="f",
            session_timeout_ms=3000,
            broker=BROKER,
        ),
        redis=RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0"),
        clickhouse=ClickHouseSettings(url=f"chdb://{data / 'chdb'}"),
        router=RouterSettings(port=free_port(), produce_timeout_s=2.0),
    )
    stack = Stack(s)
    stack.up()
    yield stack, s
    stack.down()


@pytest.fixture(scope="module")
def own_fabric(own_stack: tuple[Stack, Settings]) -> Iterator[Fabric]:
    fab = start_fabric(own_stack[1], ("worker", "router"), FABRIC_ROUTER__PRODUCE_TIMEOUT_S="2")
    yield fab
    fab.stop()


@pytest.fixture
async def client(own_fabric: Fabric) -> AsyncIterator[httpx.AsyncClient]:
    SETTINGS[:] = [own_fabric.settings]
    async with httpx.AsyncClient(base_url=own_fabric.url, timeout=15) as c:
        yield c


SETTINGS: list[Settings] = []  # the fabric the client talks to (tokens are signed with its dev key)


def page(tenant: str, subject: str, seq: int) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex, "source": "lowcode://designer", "type": "page.updated", "subject": subject,
        "tenant": tenant, "sequence": seq, "data": {"app": "crm", "page": subject, "title": f"{tenant} v{seq}"},
    }  # fmt: skip


async def post(client: httpx.AsyncClient, tenant: str, body: Any) -> httpx.Response:
    return await client.post("/v1/events", json=body, headers=bearer(SETTINGS[0], tenant))


async def latest(client: httpx.AsyncClient, tenant: str, subjects: list[str], seq: int) -> bool:
    for s in subjects:
        r = await client.get(f"/v1/contexts/PageDSL/{s}", headers=bearer(SETTINGS[0], tenant))
        if r.status_code != 200 or r.json()["sequence"] != seq or r.json()["stale"]:
            return False
    return True


async def watch_pulls(
    client: httpx.AsyncClient, subjects: list[str], stop: asyncio.Event, seen: dict[int, int]
) -> None:
    """Pull two tenants' subjects during the fault: only 200 (own tenant's data) or 503."""
    while not stop.is_set():
        for tenant in ("alpha", "beta"):
            for s in subjects[:5]:
                r = await client.get(f"/v1/contexts/PageDSL/{s}", headers=bearer(SETTINGS[0], tenant))
                seen[r.status_code] = seen.get(r.status_code, 0) + 1
                assert r.status_code in (200, 503), r.text
                if r.status_code == 200:
                    assert r.json()["event"]["tenant"] == tenant
                    assert r.json()["event"]["data"]["title"].startswith(tenant)
                else:
                    assert r.headers["retry-after"] == "1"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("fault", ["flush", "restart"])
async def test_cache_lost_while_events_flow_is_rebuilt_from_kafka(
    own_stack: tuple[Stack, Settings], own_fabric: Fabric, client: httpx.AsyncClient, fault: str
) -> None:
    stack, s = own_stack
    subjects = [f"{fault}-{i}" for i in range(40)]
    for seq in (1, 2):
        for tenant in ("alpha", "beta"):
            assert (await post(client, tenant, [page(tenant, x, seq) for x in subjects])).status_code == 202
    await eventually(lambda: latest(client, "alpha", subjects, 2))
    stop, seen = asyncio.Event(), {}
    watcher = asyncio.create_task(watch_pulls(client, subjects, stop, seen))
    try:
        if fault == "flush":
            r = aioredis.from_url(s.redis.url)
            await r.flushall()
            await r.aclose()
        else:
            pid = next(p.pid for p in stack.status() if p.name == "redis")
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await eventually(lambda: next(p for p in stack.status() if p.name == "redis").pid is None)
            stack.up()
        # events keep flowing through the fault; the later ones must win
        for seq in (3, 4):
            for tenant in ("alpha", "beta"):
                resp = await post(client, tenant, [page(tenant, x, seq) for x in subjects])
                assert resp.status_code == 202, resp.text
        await eventually(lambda: latest(client, "alpha", subjects, 4), timeout=60)
        await eventually(lambda: latest(client, "beta", subjects, 4), timeout=60)
    finally:
        stop.set()
        await watcher
    assert own_fabric.procs["router"].poll() is None and own_fabric.procs["worker"].poll() is None
    r = aioredis.from_url(s.redis.url)
    try:
        counts = [int(await r.hget(CacheKeys("fabric").ctx("alpha", "PageDSL", x), "count") or 0) for x in subjects]
    finally:
        await r.aclose()
    # rebuilt by replay: seq 1..4 each applied once into the fresh cache (or 3..4 after seq 2 was replayed)
    assert all(c <= 4 for c in counts)
    print(f"\npull answers during the {fault}: {seen}")


async def test_paused_broker_refuses_or_delivers_never_drops(
    own_stack: tuple[Stack, Settings], own_fabric: Fabric, client: httpx.AsyncClient
) -> None:
    stack, s = own_stack
    broker = next(p.pid for p in stack.status() if p.name == "broker")
    assert broker is not None
    subject = "paused"
    async with Provider(
        s, source="lowcode://designer", tenant="alpha", retries=1, retry_backoff_s=0.2, delivery_timeout_s=1.0
    ) as quick:
        await quick.publish(
            quick.event("page.updated", subject, {"app": "a", "page": subject, "title": "v1"}, sequence=1)
        )
        os.kill(broker, signal.SIGSTOP)
        try:
            # the HTTP edge refuses with 503 within its produce timeout
            r = await post(client, "alpha", page("alpha", subject, 2))
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert "broker did not acknowledge" in r.json()["error"]
            # a provider with a short budget reports exactly what it could not send
            events = [quick.event("page.updated", subject, {"app": "a", "page": subject, "title": "v3"}, sequence=3)]
            with pytest.raises(PublishError) as e:
                await quick.publish_many(events)
            assert [i for i, _ in e.value.failed] == [events[0].id]
        finally:
            os.kill(broker, signal.SIGCONT)

    # a provider with a longer budget rides out a pause and delivers
    async with Provider(
        s, source="lowcode://designer", tenant="alpha", retries=8, retry_backoff_s=0.5, delivery_timeout_s=2.0
    ) as patient:
        os.kill(broker, signal.SIGSTOP)
        try:
            sending = asyncio.create_task(
                patient.publish(
                    patient.event("page.updated", subject, {"app": "a", "page": subject, "title": "v4"}, sequence=4)
                )
            )
            await asyncio.sleep(3)  # the fault: the broker stays paused for 3 s
            assert not sending.done()
        finally:
            os.kill(broker, signal.SIGCONT)
        await sending
    # the refused HTTP event, resent after the pause, is accepted
    r = await eventually(lambda: _accepted(client, page("alpha", subject, 5)), timeout=30)
    assert r
    body = await eventually(lambda: _seq(client, subject, 5), timeout=60)
    assert body["event"]["data"]["title"] == "alpha v5"


async def _accepted(client: httpx.AsyncClient, event: dict[str, Any]) -> bool:
    return (await post(client, "alpha", event)).status_code == 202


async def _seq(client: httpx.AsyncClient, subject: str, seq: int) -> dict[str, Any] | None:
    r = await client.get(f"/v1/contexts/PageDSL/{subject}", headers=bearer(SETTINGS[0], "alpha"))
    return r.json() if r.status_code == 200 and r.json()["sequence"] == seq else None

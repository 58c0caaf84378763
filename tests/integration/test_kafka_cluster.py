"""Broker faults on a three-node Apache Kafka cluster (``fabric dev up --brokers 3``):
topics with three replicas and ``min.insync.replicas=2``, the fabric's producers
idempotent with ``acks=all``, the route stage in transactions.

Half of 50,000 events come through the provider SDK, half over HTTP, while (1) the
leader of the most ingest partitions is killed with SIGKILL, or (2) all three brokers
are restarted one after another. Counted by event id afterwards: every event is in the
typed topic (read_committed), in Redis (each version applied once) and in ClickHouse,
none twice. How long pushes stopped is printed, not asserted.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from fabric import kafka
from fabric.cache.keys import CacheKeys
from fabric.client import ContextClient
from fabric.dev.procs import free_port
from fabric.dev.stack import Stack
from fabric.providers.sdk import Provider
from fabric.settings import ClickHouseSettings, KafkaSettings, RedisSettings, RouterSettings, Settings, WorkerSettings
from fabric.testing import bearer
from tests.integration.conftest import Fabric, eventually, start_fabric, typed_ids

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SUBJECTS = 500
VERSIONS = 100  # 50,000 events: the SDK sends pages 0..249, HTTP pages 250..499, 100 versions each
HALF = SUBJECTS // 2


def _free_pairs(n: int) -> list[int]:
    """n ports p whose p+1 is free too (a broker and its KRaft controller)."""
    import socket

    out: list[int] = []
    while len(out) < n:
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        if p not in out and p + 1 not in out:
            out.append(p)
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Settings]]:
    data = tmp_path_factory.mktemp("cluster")
    ports = _free_pairs(3)
    s = Settings(
        data_dir=data,
        kafka=KafkaSettings(
            bootstrap=",".join(f"127.0.0.1:{p}" for p in ports),
            brokers=3,
            broker="kafka",
            heap_mb=384,
            topic_prefix="c",
            partitions=6,
            session_timeout_ms=6000,
        ),
        redis=RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0"),
        clickhouse=ClickHouseSettings(url=f"chdb://{data / 'chdb'}", flush_interval_s=0.3),
        router=RouterSettings(port=free_port()),
        worker=WorkerSettings(metrics_port=0),
    )
    stack = Stack(s)
    stack.up(timeout=120)
    yield stack, s
    stack.down()


def page(tenant: str, subject: int, seq: int) -> dict[str, Any]:
    return {"id": f"{tenant}-{subject}-{seq}", "source": "lowcode://designer", "type": "page.updated",
            "subject": f"page-{subject}", "tenant": tenant, "sequence": seq,
            "data": {"app": "crm", "page": f"page-{subject}", "title": f"v{seq}"}}  # fmt: skip


async def leaders(s: Settings, topic: str) -> Counter[int]:
    """How many partitions of ``topic`` each broker leads."""
    admin = kafka.admin(s)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return Counter(int(p["leader"]) for p in described["partitions"])
    finally:
        await admin.close()


class Flow:
    """50,000 events, half by the SDK and half over HTTP, at a steady pace, with a
    subscriber noting when pushes arrive."""

    def __init__(self, fab: Fabric, s: Settings, tenant: str) -> None:
        self.fab, self.s, self.tenant = fab, s, tenant
        self.http_resent = 0
        self.push_times: list[float] = []
        self.subscribed = asyncio.Event()

    async def sdk(self) -> None:
        async with Provider(self.s, source="lowcode://designer", tenant=self.tenant, delivery_timeout_s=60) as p:
            for seq in range(1, VERSIONS + 1):
                events = [p.event("page.updated", f"page-{i}", page(self.tenant, i, seq)["data"], sequence=seq,
                                  id=f"{self.tenant}-{i}-{seq}") for i in range(HALF)]  # fmt: skip
                await p.publish_many(events)
                await asyncio.sleep(0.05)

    async def http(self) -> None:
        headers = bearer(self.s, self.tenant)
        async with httpx.AsyncClient(base_url=self.fab.url, headers=headers, timeout=30) as c:
            for seq in range(1, VERSIONS + 1):
                batch = [page(self.tenant, i, seq) for i in range(HALF, SUBJECTS)]
                while (r := await c.post("/v1/events", json=batch)).status_code != 202:
                    assert r.status_code == 503, r.text  # the broker did not acknowledge: send again
                    self.http_resent += 1
                    await asyncio.sleep(0.5)
                await asyncio.sleep(0.05)

    async def watch(self) -> None:
        token = bearer(self.s, self.tenant)["Authorization"].removeprefix("Bearer ")
        async with ContextClient(self.fab.url, token) as client:
            updates = client.subscribe(["page.*"])
            self.subscribed.set()
            async for _ in updates:
                self.push_times.append(time.monotonic())

    def longest_gap_after(self, t: float) -> float:
        later = [x for x in self.push_times if x >= t - 1]
        return max((b - a for a, b in itertools.pairwise(later)), default=float("nan"))


async def check_exactly_once(fab: Fabric, s: Settings, tenant: str) -> dict[str, int]:
    want = {f"{tenant}-{i}-{seq}" for i in range(SUBJECTS) for seq in range(1, VERSIONS + 1)}
    r = aioredis.from_url(s.redis.url)
    keys = CacheKeys(s.redis.key_prefix)
    try:

        async def cache_done() -> bool:
            async with r.pipeline(transaction=False) as p:
                for i in range(SUBJECTS):
                    p.hmget(keys.ctx(tenant, "PageDSL", f"page-{i}"), "seq", "count")
                rows = await p.execute()
            return all(seq == str(VERSIONS).encode() for seq, _ in rows)

        await eventually(cache_done, timeout=180, interval=0.5)
        async with r.pipeline(transaction=False) as p:
            for i in range(SUBJECTS):
                p.hget(keys.ctx(tenant, "PageDSL", f"page-{i}"), "count")
            applied = sum(int(c or 0) for c in await p.execute())
    finally:
        await r.aclose()
    ids = await typed_ids(s)
    mine = [i for i in ids if i.startswith(f"{tenant}-")]
    counted = Counter(mine)
    # FINAL: a sink that lost its commit in a rebalance writes rows again, which the table collapses
    sql = f"SELECT count() AS n, uniqExact(id) AS ids FROM fabric.events FINAL WHERE tenant = '{tenant}' AND context_type = 'PageDSL'"

    def landed() -> dict[str, Any] | None:
        out = fab.cli("query", sql, "--format", "json")
        assert out.returncode == 0, out.stderr
        row: dict[str, Any] = orjson.loads(out.stdout)[0]
        return row if int(row["ids"]) == len(want) else None

    row = await eventually(landed, timeout=180, interval=1.0)
    return {"lost": len(want - set(counted)), "doubled_in_topic": sum(n - 1 for n in counted.values()),
            "cache_applied": applied, "clickhouse_rows": int(row["n"]), "clickhouse_ids": int(row["ids"])}  # fmt: skip


async def run_with_fault(stack: Stack, s: Settings, tmp: Path, fault: Any) -> tuple[dict[str, int], Flow, float]:
    s = s.model_copy(update={"data_dir": tmp})  # the fabric's own: its dev key signs the tokens
    fab = start_fabric(s, ("worker", "sink", "router"))
    tenant = f"c{uuid.uuid4().hex[:6]}"
    flow = Flow(fab, s, tenant)
    try:
        watcher = asyncio.create_task(flow.watch())
        await asyncio.wait_for(flow.subscribed.wait(), 30)
        await asyncio.sleep(1)
        senders = asyncio.gather(flow.sdk(), flow.http())
        # well into the stream: thousands of changes already pushed
        await eventually(lambda: len(flow.push_times) >= 5_000, timeout=120, interval=0.1)
        assert not senders.done()
        fault_at = time.monotonic()
        await fault()
        await asyncio.wait_for(senders, 300)
        counts = await check_exactly_once(fab, s, tenant)
        watcher.cancel()
        return counts, flow, fault_at
    finally:
        fab.stop()


async def test_killing_the_busiest_leader_loses_and_doubles_nothing(
    cluster: tuple[Stack, Settings], tmp_path: Path
) -> None:
    stack, s = cluster
    killed: list[str] = []

    async def kill_leader() -> None:
        led = await leaders(s, s.topic("ingest"))
        node = led.most_common(1)[0][0]
        part = next(p for p in stack.parts() if p.name == f"broker-{node}")
        pid = part.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed.append(part.name)

    try:
        counts, flow, at = await run_with_fault(stack, s, tmp_path, kill_leader)
    finally:
        stack.up(timeout=120)  # the killed node comes back for the next test
    total = SUBJECTS * VERSIONS
    assert counts["lost"] == 0
    assert counts["cache_applied"] == total  # every version applied once
    assert counts["clickhouse_ids"] == total and counts["clickhouse_rows"] == total
    # doubles in the topic can only come from a producer's resend (the edge producers are not
    # idempotent: see fabric/router/runtime.py); the cache and ClickHouse keep each event once
    print(f"\nkilled {killed[0]} (leader of the most ingest partitions): {counts}; HTTP batches resent "
          f"after a 503: {flow.http_resent}; longest gap between pushes: {flow.longest_gap_after(at):.2f} s")  # fmt: skip


async def test_a_rolling_restart_under_load_loses_and_doubles_nothing(
    cluster: tuple[Stack, Settings], tmp_path: Path
) -> None:
    stack, s = cluster

    async def roll() -> None:
        for part in [p for p in stack.parts() if p.name.startswith("broker-")]:
            pid = part.pid()
            assert pid is not None
            os.kill(pid, signal.SIGTERM)  # a clean shutdown hands leadership over first
            await eventually(lambda part=part: part.pid() is None, timeout=60)
            await asyncio.to_thread(stack.up, 120)
            # the next only once every partition has its replicas back in sync
            await eventually(lambda: _fully_replicated(s), timeout=120, interval=1.0)

    counts, flow, at = await run_with_fault(stack, s, tmp_path, roll)
    total = SUBJECTS * VERSIONS
    assert counts["lost"] == 0
    assert counts["cache_applied"] == total
    assert counts["clickhouse_ids"] == total and counts["clickhouse_rows"] == total
    # doubles in the topic can only come from a producer's resend (the edge producers are not
    # idempotent: see fabric/router/runtime.py); the cache and ClickHouse keep each event once
    print(
        f"\nrolling restart of 3 brokers: {counts}; HTTP batches resent after a 503: {flow.http_resent}; "
        f"longest gap between pushes: {flow.longest_gap_after(at):.2f} s"
    )


async def _fully_replicated(s: Settings) -> bool:
    admin = kafka.admin(s)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(f"{s.kafka.topic_prefix}.")]
        described = await admin.describe_topics(topics)
        return all(len(p["isr"]) == len(p["replicas"]) for t in described for p in t["partitions"])
    finally:
        await admin.close()

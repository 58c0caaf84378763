"""A worker killed with SIGKILL mid-stream loses nothing and doubles nothing: counted by
event id in the typed topic (read_committed), in Redis and in ClickHouse."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import TopicPartition

from fabric import kafka
from fabric.cache.keys import CacheKeys
from fabric.dev.stack import Stack
from fabric.settings import Settings
from tests.integration.conftest import eventually, start_fabric, typed_ids, variant

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SUBJECTS = 1_000
VERSIONS = 50  # 50,000 events


def event(tenant: str, subject: int, seq: int) -> bytes:
    return orjson.dumps({
        "id": f"e{subject}-{seq}", "source": "lowcode://designer", "type": "page.updated", "subject": f"page-{subject}",
        "tenant": tenant, "sequence": seq,
        "data": {"app": "crm", "page": f"page-{subject}", "title": f"v{seq}", "components": [
            {"id": "c1", "kind": "table", "props": {"rows": seq, "label": "x" * 200}}]},
    })  # fmt: skip


async def applied_total(r: aioredis.Redis, keys: CacheKeys, tenant: str) -> int:
    """How many changes the cache applied for the tenant (sum of per-subject change counts)."""
    async with r.pipeline(transaction=False) as p:
        for i in range(SUBJECTS):
            p.hget(keys.ctx(tenant, "PageDSL", f"page-{i}"), "count")
        counts = await p.execute()
    return sum(int(c or 0) for c in counts)


async def test_sigkill_mid_stream_then_restart(stack: Stack, stack_settings: Settings, tmp_path: Path) -> None:
    s = variant(stack_settings, tmp_path)
    fab = start_fabric(s, ("worker", "sink", "router"))
    r = aioredis.from_url(s.redis.url)
    keys = CacheKeys(s.redis.key_prefix)
    tenant = "crash"
    producer = kafka.producer(s, linger_ms=5)
    await producer.start()
    try:

        async def produce() -> None:
            # versions in order per subject, subjects interleaved: ~10k events/s for ~5 s
            for seq in range(1, VERSIONS + 1):
                for i in range(SUBJECTS):
                    await producer.send(s.topic("ingest"), event(tenant, i, seq), key=f"{tenant}/page-{i}".encode())
                if seq % 10 == 0:
                    await producer.flush()
                    await asyncio.sleep(1.0)
            await producer.flush()

        sending = asyncio.create_task(produce())
        # kill once the worker is well into the stream
        await eventually(lambda: _at_least(r, keys, tenant, 12_000), timeout=60, interval=0.02)
        fab.kill("worker")
        killed_at = await applied_total(r, keys, tenant)
        assert killed_at < SUBJECTS * VERSIONS
        restarted = time.monotonic()
        fab.start("worker")
        await eventually(lambda: _at_least(r, keys, tenant, killed_at + 1), timeout=10, interval=0.05)
        resumed_after = time.monotonic() - restarted
        await sending

        async def all_latest() -> bool:
            async with r.pipeline(transaction=False) as p:
                for i in range(SUBJECTS):
                    p.hmget(keys.ctx(tenant, "PageDSL", f"page-{i}"), "seq", "count")
                rows = await p.execute()
            return all(seq == str(VERSIONS).encode() for seq, _ in rows)

        await eventually(all_latest, timeout=120, interval=0.25)
        # nothing doubled: every version of every subject was applied exactly once
        assert await applied_total(r, keys, tenant) == SUBJECTS * VERSIONS
        body = orjson.loads(await r.hget(keys.ctx(tenant, "PageDSL", "page-7"), "v"))
        assert body["data"]["title"] == f"v{VERSIONS}"
        # no DLQ entries from the crash
        consumer = kafka.consumer(s)
        await consumer.start()
        try:
            tps = [TopicPartition(s.topic("dlq"), p) for p in range(s.kafka.partitions)]
            assert sum((await consumer.end_offsets(tps)).values()) == 0
        finally:
            await consumer.stop()
        if not s.kafka.transactions:
            return  # Tansu has no transactions: routing there is at least once, the cache once
        # every event id exactly once in the typed topic, as a read_committed reader sees it
        ids = await typed_ids(s)
        assert len(ids) == SUBJECTS * VERSIONS
        doubled = [i for i, n in Counter(ids).items() if n > 1]
        assert doubled == [], f"{len(doubled)} events routed twice, e.g. {doubled[:3]}"
        # ... and in ClickHouse, without FINAL: no row written twice
        sql = f"SELECT count() AS n, uniqExact(id) AS ids FROM fabric.events WHERE tenant = '{tenant}' AND context_type = 'PageDSL'"

        def landed() -> bool:
            r = fab.cli("query", sql, "--format", "json")
            assert r.returncode == 0, r.stderr
            row = orjson.loads(r.stdout)[0]
            return int(row["ids"]) == SUBJECTS * VERSIONS

        await eventually(landed, timeout=120, interval=1.0)
        row = orjson.loads(fab.cli("query", sql, "--format", "json").stdout)[0]
        assert int(row["n"]) == SUBJECTS * VERSIONS
        print(f"\nworker killed at {killed_at} applied changes; back to processing {resumed_after:.1f} s after restart")
    finally:
        await producer.stop()
        await r.aclose()
        fab.stop()


async def _at_least(r: aioredis.Redis, keys: CacheKeys, tenant: str, n: int) -> bool:
    return await applied_total(r, keys, tenant) >= n

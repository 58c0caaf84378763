"""The ClickHouse sink failing: rows wait and land once it recovers; the worker never waits."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import Fabric, eventually

pytestmark = pytest.mark.integration


def rows(fabric: Fabric, sql: str) -> list[dict[str, Any]]:
    r = fabric.cli("query", sql, "--format", "json")
    assert r.returncode == 0, r.stderr
    out: list[dict[str, Any]] = orjson.loads(r.stdout)
    return out


async def test_rows_land_after_the_engine_comes_back_and_the_worker_never_waits(
    fabric: Fabric, http: httpx.AsyncClient, tenant: str
) -> None:
    rows(fabric, "DETACH TABLE fabric.events")
    try:
        for i in range(30):
            event = {"id": uuid.uuid4().hex, "source": "crm://x", "type": "saas.deal.updated", "subject": f"D-{i}",
                     "tenant": tenant, "sequence": 1,
                     "data": {"system": "crm", "object": "Deal", "record_id": f"D-{i}", "fields": {"stage": "won"}}}  # fmt: skip
            assert (await http.post("/v1/events", json=event)).status_code == 202

        async def all_pullable() -> bool:
            r = await http.get("/v1/contexts/SaaSRecord", params={"limit": 100})
            return len(r.json()["items"]) == 30

        await eventually(all_pullable)  # the worker goes on while the sink cannot write

        def failing() -> bool:
            return "sink: fabric.events unavailable" in fabric.log("sink")

        await eventually(failing, timeout=30)
    finally:
        rows(fabric, "ATTACH TABLE fabric.events")

    def landed() -> list[dict[str, Any]]:
        return rows(fabric, f"SELECT count() AS n FROM fabric.events FINAL WHERE tenant = '{tenant}'")

    await eventually(lambda: landed()[0]["n"] == 30, timeout=60, interval=0.5)


async def test_records_the_sink_cannot_read_go_to_the_dlq_table(
    fabric: Fabric, http: httpx.AsyncClient, tenant: str
) -> None:
    s = fabric.settings
    marker = uuid.uuid4().hex.encode()
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka.bootstrap)
    await producer.start()
    try:  # a misbehaving producer writes straight to a typed topic
        await producer.send_and_wait(s.topic("page"), b"\x00\x00\x00\x00\x02" + marker, key=f"{tenant}/x".encode())
    finally:
        await producer.stop()
    ok = {"id": "after", "source": "s", "type": "page.updated", "subject": "after", "tenant": tenant, "sequence": 1,
          "data": {"app": "a", "page": "after", "title": "t"}}  # fmt: skip
    assert (await http.post("/v1/events", json=ok)).status_code == 202

    def dead() -> list[dict[str, Any]]:
        return rows(
            fabric,
            f"SELECT reason, source_topic, topic FROM fabric.dlq WHERE position(original, '{marker.decode()}') > 0 ORDER BY topic",
        )

    found = await eventually(lambda: len(dead()) == 2 and dead(), timeout=60, interval=0.5)
    # the materializer dead-lettered it to ctx.dlq, and the sink recorded it could not read it
    assert {r["topic"] for r in found} == {s.topic("dlq"), s.topic("page")}
    assert all(r["source_topic"] == s.topic("page") for r in found)
    assert any("sink could not read the typed record" in r["reason"] for r in found)

    def landed() -> bool:
        return rows(fabric, f"SELECT count() AS n FROM fabric.events FINAL WHERE tenant = '{tenant}'")[0]["n"] == 1

    await eventually(landed, timeout=60, interval=0.5)

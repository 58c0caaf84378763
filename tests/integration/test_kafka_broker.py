"""The fabric on Apache Kafka (KRaft, one node, started by ``fabric dev up --broker kafka``
from jars Maven resolves): events flow end to end, and they survive a broker restart."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from fabric.dev.procs import free_port
from fabric.dev.stack import Stack
from fabric.settings import ClickHouseSettings, KafkaSettings, RedisSettings, RouterSettings, Settings, WorkerSettings
from fabric.testing import bearer
from tests.integration.conftest import eventually, start_fabric

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kafka_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Settings]]:
    data = tmp_path_factory.mktemp("kafka")
    s = Settings(
        data_dir=data,
        kafka=KafkaSettings(
            bootstrap=f"127.0.0.1:{free_port()}",
            controller_port=free_port(),
            broker="kafka",
            topic_prefix="k",
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


def page(tenant: str, subject: str, seq: int) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "source": "test://kafka", "type": "page.updated", "subject": subject,
            "tenant": tenant, "sequence": seq, "data": {"app": "a", "page": subject, "title": f"v{seq}"}}  # fmt: skip


async def test_events_flow_on_apache_kafka_and_survive_a_broker_restart(kafka_stack: tuple[Stack, Settings]) -> None:
    stack, s = kafka_stack
    tenant = f"k{uuid.uuid4().hex[:8]}"
    fab = start_fabric(s, ("worker", "sink", "router"))
    try:
        async with httpx.AsyncClient(base_url=fab.url, headers=bearer(s, tenant), timeout=15) as c:
            r = await c.post("/v1/events", json=[page(tenant, f"p{i}", 1) for i in range(20)])
            assert r.status_code == 202, r.text

            async def all_there() -> bool:
                listed = await c.get("/v1/contexts/PageDSL", params={"limit": 100})
                return listed.status_code == 200 and len(listed.json()["items"]) == 20

            await eventually(all_there, timeout=60)

        def stored() -> bool:
            sql = f"SELECT count() AS n FROM fabric.events FINAL WHERE tenant = '{tenant}'"
            out = fab.cli("query", sql, "--format", "json")
            return out.returncode == 0 and orjson.loads(out.stdout)[0]["n"] == 20

        await eventually(stored, timeout=60)
    finally:
        fab.stop()
    # the stack restarts: Redis comes back empty, Kafka with what it kept on disk, and the
    # worker rebuilds the cache from it
    assert [p.note for p in stack.down()] == ["stopped", "stopped"]
    stack.up(timeout=120)
    fab = start_fabric(s, ("worker", "router"))
    try:
        async with httpx.AsyncClient(base_url=fab.url, headers=bearer(s, tenant), timeout=15) as c:

            async def rebuilt() -> bool:
                listed = await c.get("/v1/contexts/PageDSL", params={"limit": 100})
                return listed.status_code == 200 and len(listed.json()["items"]) == 20

            await eventually(rebuilt, timeout=90)
    finally:
        fab.stop()

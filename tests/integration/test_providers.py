"""The built-in providers on real inputs: a file being appended to, a live Prometheus
endpoint, signed webhooks, and a SQLite table; each run as ``fabric provider ...``."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from fabric.client import subject_path
from fabric.dev.procs import free_port
from fabric.providers.builtin.webhooks import sign
from fabric.testing import bearer
from tests.integration.conftest import Fabric, eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def run_provider(spawn: Any) -> Any:
    return lambda *args: spawn("-m", "fabric", "provider", *args)


async def pull(fabric: Fabric, tenant: str, ctype: str, subject: str) -> dict[str, Any] | None:
    async with httpx.AsyncClient(base_url=fabric.url, headers=bearer(fabric.settings, tenant), timeout=10) as c:
        r = await c.get(f"/v1/contexts/{ctype}/{subject_path(subject)}")
        return r.json() if r.status_code == 200 else None


async def test_log_file_being_appended(fabric: Fabric, tenant: str, tmp_path: Path, run_provider: Any) -> None:
    log = tmp_path / "orders.jsonl"
    log.write_text(json.dumps({"level": "info", "msg": "started", "port": 8080}) + "\n")
    run_provider("logs", "--tenant", tenant, "--service", "orders-api", "--file", str(log))

    async def window(n: int) -> list[dict[str, Any]] | None:
        body = await pull(fabric, tenant, "LogEntry", "orders-api")
        return body["window"] if body and len(body["window"]) >= n else None

    first = await eventually(lambda: window(1))
    assert first[0]["data"] == {"service": "orders-api", "level": "INFO", "message": "started",
                                "attributes": {"port": 8080}}  # fmt: skip
    with log.open("a") as f:  # appended while the provider runs: JSON, a warning, and a plain line
        f.write(json.dumps({"severity": "ERROR", "message": "db timeout", "logger": "sql", "ms": 5003}) + "\n")
        f.write(json.dumps({"level": "warning", "msg": "slow"}) + "\n")
        f.write("plain text line\n")
    lines = await eventually(lambda: window(4))
    assert [(w["data"]["level"], w["data"]["message"]) for w in lines] == [
        ("INFO", "plain text line"),
        ("WARN", "slow"),
        ("ERROR", "db timeout"),
        ("INFO", "started"),
    ]  # newest first
    assert lines[2]["data"]["logger"] == "sql" and lines[2]["data"]["attributes"] == {"ms": 5003}
    log.write_text(json.dumps({"level": "info", "msg": "rotated"}) + "\n")  # truncated and rewritten
    after = await eventually(lambda: window(5))
    assert after[0]["data"]["message"] == "rotated"


async def test_prometheus_endpoint_is_scraped(fabric: Fabric, tenant: str, run_provider: Any) -> None:
    registry = CollectorRegistry()
    depth = Gauge("queue_depth", "Jobs waiting", registry=registry)
    served = Counter("http_requests", "Requests", ["method"], registry=registry)
    depth.set(7)
    served.labels("GET").inc(3)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        run_provider("prometheus", "--tenant", tenant, "--service", "jobs", "--every", "0.3",
                     "--url", f"http://127.0.0.1:{port}/metrics")  # fmt: skip

        async def value(subject: str, want: float) -> dict[str, Any] | None:
            body = await pull(fabric, tenant, "Metric", subject)
            return body if body and body["event"]["data"]["value"] == want else None

        body = await eventually(lambda: value("jobs:queue_depth", 7.0))
        assert body["event"]["data"]["service"] == "jobs"
        counted = await eventually(lambda: value('jobs:http_requests_total{method="GET"}', 3.0))
        assert counted["event"]["data"]["labels"] == {"method": "GET"}
        depth.set(42)  # the next scrape sees the change
        await eventually(lambda: value("jobs:queue_depth", 42.0))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def webhook_receiver(run_provider: Any, tenant: str, *args: str) -> str:
    """Start ``fabric provider webhooks`` (system crm, secret s3cret); its URL once it answers."""
    port = free_port()
    run_provider("webhooks", "--tenant", tenant, "--secret", "crm=s3cret", "--port", str(port), *args)
    url = f"http://127.0.0.1:{port}/hooks/crm"

    async def up() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as c:
                await c.get(url)
            return True
        except httpx.HTTPError:
            return False

    await eventually(up)
    return url


async def test_signed_webhooks_become_saas_records(fabric: Fabric, tenant: str, run_provider: Any) -> None:
    url = await webhook_receiver(run_provider, tenant)
    body = json.dumps({"object": "Account", "record_id": "A-7", "action": "updated", "sequence": 2,
                       "fields": {"name": "Initech", "tier": "gold", "arr": 120000}}).encode()  # fmt: skip
    async with httpx.AsyncClient(timeout=10) as c:
        unsigned = await c.post(url, content=body)
        forged = await c.post(url, content=body, headers=sign(b"guess", body, "d-1"))
        assert unsigned.status_code == forged.status_code == 401
        bad = json.dumps({"object": "Account"}).encode()
        r = await c.post(url, content=bad, headers=sign(b"s3cret", bad, "d-0"))
        assert r.status_code == 400 and r.json()["pointer"] == "/0/record_id"
        r = await c.post(url, content=body, headers=sign(b"s3cret", body, "d-1"))
        assert r.status_code == 202, r.text
    record = await eventually(lambda: pull(fabric, tenant, "SaaSRecord", "A-7"))
    assert record["event"]["type"] == "saas.account.updated" and record["sequence"] == 2
    assert record["event"]["data"]["fields"] == {"name": "Initech", "tier": "gold", "arr": 120000}
    assert record["changes"] == 1  # the refused deliveries published nothing


async def test_webhook_replays_big_bodies_and_bad_headers_are_refused(
    fabric: Fabric, tenant: str, run_provider: Any
) -> None:
    """Finding 4: a replayed delivery set a record back; unsigned 300 MB bodies were read
    whole before the 401; a signature header with byte 0xFF answered 500."""
    url = await webhook_receiver(run_provider, tenant, "--max-body-bytes", "65536")

    def delivery(tier: str) -> bytes:
        return json.dumps({"object": "Account", "record_id": "A-9", "fields": {"tier": tier}}).encode()

    old, new = delivery("silver"), delivery("gold")
    async with httpx.AsyncClient(timeout=30) as c:
        first = sign(b"s3cret", old, "d-old")
        assert (await c.post(url, content=old, headers=first)).status_code == 202
        await eventually(lambda: pull(fabric, tenant, "SaaSRecord", "A-9"))
        assert (await c.post(url, content=new, headers=sign(b"s3cret", new, "d-new"))).status_code == 202
        # the old delivery replayed: the same headers are seen again, or a signed time long past
        again = await c.post(url, content=old, headers=first)
        assert again.status_code == 200 and again.json()["duplicate"] is True
        stale = await c.post(url, content=old, headers=sign(b"s3cret", old, "d-other", at=int(time.time()) - 3600))
        assert stale.status_code == 401 and "replayed" in stale.json()["error"]
        # a body over the cap is refused before it is read, signed or not
        big = b"x" * (2 << 20)
        r = await c.post(url, content=big)
        assert r.status_code == 413
        # malformed headers are 401, not 500
        for bad in ({b"x-fabric-signature": b"t=\xff,v1=\xff", b"x-fabric-delivery": b"d"},
                    {b"x-fabric-signature": b"sha256=abc"},
                    {b"x-fabric-signature": b"t=1,v1=00", b"x-fabric-delivery": b"\xff"}):  # fmt: skip
            r = await c.post(url, content=new, headers=bad)
            assert r.status_code == 401, (bad, r.status_code, r.text)

    async def gold() -> bool:
        got = await pull(fabric, tenant, "SaaSRecord", "A-9")
        return bool(got) and got["event"]["data"]["fields"]["tier"] == "gold" and got["changes"] == 2

    await eventually(gold)
    await asyncio.sleep(1.0)  # nothing else arrives: the replays published nothing
    got = await pull(fabric, tenant, "SaaSRecord", "A-9")
    assert got is not None and got["changes"] == 2 and got["event"]["data"]["fields"]["tier"] == "gold"


async def test_sqlite_table_is_polled(fabric: Fabric, tenant: str, tmp_path: Path, run_provider: Any) -> None:
    db = tmp_path / "shop.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT NOT NULL, tier TEXT, updated_at INTEGER)")
    now = int(time.time() * 1000)
    con.executemany(
        "INSERT INTO accounts VALUES (?, ?, ?, ?)", [(1, "Initech", "gold", now), (2, "Umbrella", "silver", now)]
    )
    con.commit()
    run_provider("sql", "--tenant", tenant, "--url", f"sqlite:///{db}", "--table", "accounts", "--every", "0.3")

    async def version(subject: str, seq: int) -> dict[str, Any] | None:
        body = await pull(fabric, tenant, "SaaSRecord", subject)
        return body if body and body["sequence"] == seq else None

    one = await eventually(lambda: version("1", now))
    assert one["event"]["data"]["fields"] == {"id": 1, "name": "Initech", "tier": "gold", "updated_at": now}
    assert one["event"]["data"]["system"] == "shop" and one["event"]["type"] == "saas.accounts.updated"
    await eventually(lambda: version("2", now))
    shape = await eventually(lambda: pull(fabric, tenant, "SQLSchema", "shop.accounts"))
    assert [c["name"] for c in shape["event"]["data"]["columns"]] == ["id", "name", "tier", "updated_at"]
    assert shape["event"]["data"]["primary_key"] == ["id"]

    con.execute("UPDATE accounts SET tier = 'platinum', updated_at = ? WHERE id = 1", (now + 5,))
    con.execute("ALTER TABLE accounts ADD COLUMN region TEXT")
    con.commit()
    con.close()
    updated = await eventually(lambda: version("1", now + 5))
    assert updated["event"]["data"]["fields"]["tier"] == "platinum" and updated["changes"] == 2

    async def altered() -> dict[str, Any] | None:
        body = await pull(fabric, tenant, "SQLSchema", "shop.accounts")
        return body if body and body["event"]["data"]["change"] == "altered" else None

    assert (await eventually(altered))["event"]["data"]["columns"][-1]["name"] == "region"

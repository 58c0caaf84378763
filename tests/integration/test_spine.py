"""The spine end to end on the real broker, Redis and ClickHouse engine."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from fabric.events.catalogue import Catalogue
from fabric.events.codecs import avro_encode, confluent_frame
from fabric.testing import bearer
from tests.integration.conftest import Fabric, eventually

pytestmark = pytest.mark.integration


def page_event(tenant: str, subject: str, seq: int, title: str = "Orders", **extra: Any) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex, "source": "lowcode://designer", "type": "page.updated",
        "subject": subject, "tenant": tenant, "sequence": seq,
        "data": {"app": "crm", "page": subject, "title": title, "components": []}, **extra,
    }  # fmt: skip


def log_event(tenant: str, subject: str, message: str) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex, "source": "svc://api", "type": "log.entry", "subject": subject,
        "tenant": tenant, "data": {"service": subject, "level": "ERROR", "message": message},
    }  # fmt: skip


async def pulled(http: httpx.AsyncClient, ctype: str, subject: str, seq: int | None = None) -> dict[str, Any] | None:
    r = await http.get(f"/v1/contexts/{ctype}/{subject}")
    if r.status_code != 200:
        return None
    body: dict[str, Any] = r.json()
    return body if seq is None or body["sequence"] == seq else None


async def test_http_event_is_pullable_and_pushed_only_to_matching_subscribers(
    fabric: Fabric, http: httpx.AsyncClient, tenant: str, subscribe: Any
) -> None:
    other = f"{tenant}x"
    pages = await subscribe(tenant, ["page.*"])
    logs_only = await subscribe(tenant, ["log.*"])
    other_tenant = await subscribe(other, ["*"])

    r = await http.post("/v1/events", json=page_event(tenant, "orders/list", 1, "Orders"))
    assert r.status_code == 202, r.text
    body = await eventually(lambda: pulled(http, "PageDSL", "orders/list", 1))
    assert body["event"]["data"]["title"] == "Orders"
    assert body["event"]["tenant"] == tenant and body["event"]["provider"] == "http"
    assert body["age_ms"] >= 0 and body["as_of"].endswith("Z") and body["stale"] is False

    await eventually(lambda: pages.pushes())
    # markers: a log for this tenant, a page for the other one; each reaches only its subscriber
    await http.post("/v1/events", json=log_event(tenant, "api", "marker"))
    await http.post("/v1/events", json=page_event(other, "p", 1), headers=bearer(fabric.settings, other))
    await eventually(lambda: logs_only.pushes() and other_tenant.pushes())

    assert [(p["type"], p["subject"], p["sequence"]) for p in pages.pushes()] == [("page.updated", "orders/list", 1)]
    assert [p["type"] for p in logs_only.pushes()] == ["log.entry"]
    assert [(p["event"]["tenant"], p["subject"]) for p in other_tenant.pushes()] == [(other, "p")]
    assert pages.pushes()[0]["resume"]


async def test_kafka_client_with_cloudevents_headers(
    fabric: Fabric, http: httpx.AsyncClient, tenant: str, subscribe: Any
) -> None:
    sub = await subscribe(tenant, ["saas.*"])
    producer = AIOKafkaProducer(bootstrap_servers=fabric.settings.kafka.bootstrap)
    await producer.start()
    try:
        data = {"system": "crm", "object": "Account", "record_id": "A-1", "fields": {"tier": "gold", "arr": 5}}
        await producer.send_and_wait(
            fabric.settings.topic("ingest"), orjson.dumps(data), key=f"{tenant}/A-1".encode(),
            headers=[
                ("ce_specversion", b"1.0"), ("ce_id", b"evt-1"), ("ce_source", b"crm://sales"),
                ("ce_type", b"saas.account.updated"), ("ce_subject", b"A-1"),
                ("ce_tenant", tenant.encode()), ("ce_sequence", b"4"),
                ("ce_time", b"2026-01-02T03:04:05Z"), ("content-type", b"application/json"),
            ],
        )  # fmt: skip
    finally:
        await producer.stop()
    body = await eventually(lambda: pulled(http, "SaaSRecord", "A-1", 4))
    assert body["event"]["data"]["fields"] == {"tier": "gold", "arr": 5}
    assert body["event"]["source"] == "crm://sales"
    assert body["as_of"] == "2026-01-02T03:04:05.000Z"
    pushes = await eventually(lambda: sub.pushes())
    assert pushes[0]["subject"] == "A-1" and pushes[0]["sequence"] == 4


async def test_confluent_avro_from_a_kafka_client(
    fabric: Fabric, http: httpx.AsyncClient, tenant: str, catalogue: Catalogue
) -> None:
    from datetime import UTC, datetime

    ct = catalogue["Metric"]
    record = {
        "id": "m-1", "source": "prom://x", "specversion": "1.0", "type": "metric.sample",
        "subject": "api:p95", "time": datetime(2026, 5, 1, tzinfo=UTC), "tenant": tenant,
        "sequence": 1, "data": {"name": "p95", "value": 12.5, "labels": {"route": "/"}},
    }  # fmt: skip
    value = confluent_frame(ct.schema_id, avro_encode(catalogue.schemas.avro("Metric"), record))
    producer = AIOKafkaProducer(bootstrap_servers=fabric.settings.kafka.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(fabric.settings.topic("ingest"), value, key=f"{tenant}/api:p95".encode())
    finally:
        await producer.stop()
    body = await eventually(lambda: pulled(http, "Metric", "api:p95"))
    assert body["event"]["data"]["value"] == 12.5
    assert len(body["window"]) == 1


async def test_older_or_replayed_sequence_never_overwrites(
    fabric: Fabric, http: httpx.AsyncClient, tenant: str, subscribe: Any
) -> None:
    sub = await subscribe(tenant, ["page.*"])
    newest = page_event(tenant, "home", 5, "v5")
    for ev in (newest, page_event(tenant, "home", 3, "v3"), newest, page_event(tenant, "home", 5, "v5-dup")):
        r = await http.post("/v1/events", json=ev)
        assert r.status_code == 202
    await http.post("/v1/events", json=page_event(tenant, "home", 6, "v6"))
    await eventually(lambda: pulled(http, "PageDSL", "home", 6))
    # pushes are emitted only when the cache changed: 3 and the duplicates of 5 never applied
    await eventually(lambda: len(sub.pushes()) >= 2)
    assert [(p["sequence"], p["event"]["data"]["title"]) for p in sub.pushes()] == [(5, "v5"), (6, "v6")]


async def test_a_stream_event_routed_twice_is_kept_once(fabric: Fabric, http: httpx.AsyncClient, tenant: str) -> None:
    twice = log_event(tenant, "api", "once")
    producer = AIOKafkaProducer(bootstrap_servers=fabric.settings.kafka.bootstrap)
    await producer.start()
    try:  # as after a crash between send and commit: the same event arrives again
        for _ in range(2):
            await producer.send_and_wait(
                fabric.settings.topic("ingest"), orjson.dumps(twice), key=f"{tenant}/api".encode()
            )
    finally:
        await producer.stop()
    await http.post("/v1/events", json=log_event(tenant, "api", "after"))

    async def both_there() -> dict[str, Any] | None:
        r = await http.get("/v1/contexts/LogEntry/api")
        body = r.json() if r.status_code == 200 else {}
        return body if body.get("event", {}).get("data", {}).get("message") == "after" else None

    body = await eventually(both_there)
    assert [w["data"]["message"] for w in body["window"]] == ["after", "once"]
    assert body["changes"] == 2


async def test_batch_with_invalid_events_accepts_the_valid_ones(
    fabric: Fabric, http: httpx.AsyncClient, tenant: str
) -> None:
    bad = page_event(tenant, "b", 1)
    bad["data"]["title"] = 42
    batch = [page_event(tenant, "a", 1), bad, {"type": "nope.x", "id": "z"}, page_event(tenant, "c", 1)]
    r = await http.post("/v1/events", json=batch)
    assert r.status_code == 207
    body = r.json()
    assert body["accepted"] == [batch[0]["id"], batch[3]["id"]]
    assert [(x["index"], x["pointer"]) for x in body["rejected"]] == [(1, "/1/data/title"), (2, "/2/type")]
    assert "42 is not of type 'string'" in body["rejected"][0]["error"]
    await eventually(lambda: pulled(http, "PageDSL", "c", 1))
    assert (await http.get("/v1/contexts/PageDSL/b")).status_code == 404

    lines = b"\n".join(
        [orjson.dumps(page_event(tenant, "n1", 1)), b"{not json", orjson.dumps(page_event(tenant, "n2", 1))]
    )
    r = await http.post("/v1/events", content=lines, headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 207
    assert r.json()["rejected"][0]["pointer"] == "/1"
    listed = await eventually(lambda: _listed(http, {"a", "c", "n1", "n2"}))
    assert listed


async def _listed(http: httpx.AsyncClient, want: set[str]) -> bool:
    r = await http.get("/v1/contexts/PageDSL", params={"limit": 10})
    return {i["subject"] for i in r.json()["items"]} == want


async def test_malformed_events_go_to_dlq_and_clickhouse_while_the_stream_goes_on(
    fabric: Fabric, http: httpx.AsyncClient, tenant: str
) -> None:
    s = fabric.settings
    marker = uuid.uuid4().hex
    invalid = page_event(tenant, "x", 1)
    invalid["data"]["components"] = [{"id": 1}]
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(s.topic("ingest"), b"\x89PNG" + marker.encode(), key=f"{tenant}/x".encode())
        await producer.send_and_wait(s.topic("ingest"), orjson.dumps(invalid), key=f"{tenant}/x".encode())
        await producer.send_and_wait(
            s.topic("ingest"), orjson.dumps(page_event(tenant, "x", 2, "good")), key=f"{tenant}/x".encode()
        )
    finally:
        await producer.stop()
    body = await eventually(lambda: pulled(http, "PageDSL", "x", 2))
    assert body["event"]["data"]["title"] == "good"

    consumer = AIOKafkaConsumer(s.topic("dlq"), bootstrap_servers=s.kafka.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    found: dict[bytes, dict[str, bytes]] = {}
    try:

        async def scan() -> bool:
            for recs in (await consumer.getmany(timeout_ms=200)).values():
                for rec in recs:
                    if marker.encode() in rec.value or invalid["id"].encode() in rec.value:
                        found[rec.value] = dict(rec.headers)
            return len(found) == 2

        await eventually(scan)
    finally:
        await consumer.stop()
    reasons = {v: h["fabric_error_reason"].decode() for v, h in found.items()}
    assert reasons[b"\x89PNG" + marker.encode()].startswith("not valid JSON")
    pointer = next(h["fabric_error_pointer"] for v, h in found.items() if v.startswith(b"{"))
    assert pointer == b"/data/components/0/id"

    def dlq_rows() -> Any:
        r = fabric.cli(
            "query",
            f"SELECT reason, pointer FROM fabric.dlq WHERE position(original, '{invalid['id']}') > 0",
            "--format",
            "json",
        )
        assert r.returncode == 0, r.stderr
        return orjson.loads(r.stdout)

    rows = await eventually(dlq_rows, timeout=60, interval=0.5)
    assert rows[0]["pointer"] == "/data/components/0/id"
    assert "Expected `str`, got `int`" in rows[0]["reason"]

    def event_rows() -> Any:
        r = fabric.cli(
            "query", f"SELECT subject, sequence FROM fabric.events FINAL WHERE tenant = '{tenant}'", "--format", "json"
        )
        assert r.returncode == 0, r.stderr
        return orjson.loads(r.stdout)

    assert await eventually(event_rows, timeout=60, interval=0.5) == [{"subject": "x", "sequence": 2}]


async def test_contract_errors(fabric: Fabric, http: httpx.AsyncClient) -> None:
    r = await http.get("/v1/contexts/Nope/x")
    assert r.status_code == 404 and "unknown context type 'Nope'" in r.json()["error"]
    r = await http.get("/v1/contexts/PageDSL/missing")
    assert r.status_code == 404
    r = await http.get("/v1/schemas/PageDSL")
    assert r.status_code == 200 and r.json()["$schema"].endswith("2020-12/schema")
    r = await http.get("/v1/contexts/PageDSL", params={"limit": "0"})
    assert r.status_code == 400
    async with httpx.AsyncClient(base_url=fabric.url) as anon:
        assert (await anon.get("/v1/contexts/PageDSL/x")).status_code == 401
        assert (await anon.get("/v1/schemas/PageDSL")).status_code == 401  # a registry read
        assert (await anon.get("/healthz")).json()["redis"] is True
        metrics = (await anon.get("/metrics")).text
        assert "fabric_http_errors_total" in metrics
    r = await http.post("/v1/events", content=b"x" * (fabric.settings.router.max_body_bytes + 1))
    assert r.status_code == 413
    r = await http.post("/v1/events", content=b"{broken")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]

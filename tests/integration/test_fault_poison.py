"""Poison on Kafka and HTTP: each bad input is dead-lettered or refused with a 4xx naming
the problem, and every good event around it still arrives."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabric.events.catalogue import Catalogue
from fabric.events.codecs import avro_encode, confluent_frame
from fabric.testing import bearer
from tests.integration.conftest import Fabric, eventually

pytestmark = pytest.mark.integration


def good(tenant: str, i: int) -> bytes:
    return orjson.dumps({
        "id": f"g{i}", "source": "svc://api", "type": "log.entry", "subject": f"svc-{i % 10}", "tenant": tenant,
        "data": {"service": f"svc-{i % 10}", "level": "INFO", "message": f"line {i}"},
    })  # fmt: skip


def poison_kinds(
    tenant: str, catalogue: Catalogue, limit: int
) -> dict[str, tuple[bytes, list[tuple[str, bytes]], str]]:
    """name -> (value, headers, expected words of the DLQ reason)."""
    typed = {"id": "t", "source": "s", "type": "page.updated", "subject": "p", "tenant": tenant,
             "time": datetime(2026, 1, 1, tzinfo=UTC), "data": {"app": "a", "page": "p", "title": "t"}}  # fmt: skip
    avro = confluent_frame(2, avro_encode(catalogue.schemas.avro("PageDSL"), typed))
    envelope = b'{"id":"n","source":"s","type":"page.updated","subject":"p","tenant":"' + tenant.encode() + b'","data":'
    return {
        "random bytes": (b"\x89" + os.urandom(300), [], "not valid JSON"),
        "truncated avro": (avro[:-9], [], "PageDSL envelope"),
        "wrong schema id": (b"\x00\x00\x00\x03\xe7" + avro[5:], [], "unknown schema id 999"),
        "huge payload": (b"{" + b" " * (limit + 10) + b"}", [], "over the limit"),
        "deeply nested": (envelope + b"[" * 20_000 + b"]" * 20_000 + b"}", [], "nested too deeply"),
        "invalid utf-8": (envelope.replace(b'"p"', b'"\xff\xfe"') + b"{}}", [], "UTF-8"),
        "bad ce header": (b"{}", [("ce_specversion", b"1.0"), ("ce_id", b"\xff")], "not valid UTF-8"),
    }


async def test_kafka_poison_goes_to_the_dlq_and_the_stream_goes_on(
    fabric: Fabric, http: httpx.AsyncClient, tenant: str, catalogue: Catalogue
) -> None:
    s = fabric.settings
    kinds = poison_kinds(tenant, catalogue, s.max_event_bytes)
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka.bootstrap, max_request_size=4 * 1024 * 1024, linger_ms=5)
    await producer.start()
    sent_poison: dict[bytes, str] = {}
    try:
        for i in range(1400):
            await producer.send(s.topic("ingest"), good(tenant, i), key=f"{tenant}/svc-{i % 10}".encode())
            if i % 200 == 100:
                for name, (value, headers, _) in kinds.items():
                    key = f"{tenant}/poison/{name}/{i}".encode()
                    await producer.send(s.topic("ingest"), value, key=key, headers=headers)
                    sent_poison[key] = name
        await producer.flush()
    finally:
        await producer.stop()

    async def all_good() -> bool:
        for n in range(10):
            r = await http.get(f"/v1/contexts/LogEntry/svc-{n}")
            if r.status_code != 200 or r.json()["changes"] != 140:
                return False
        return True

    await eventually(all_good, timeout=60)
    consumer = AIOKafkaConsumer(s.topic("dlq"), bootstrap_servers=s.kafka.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    reasons: dict[bytes, dict[str, bytes]] = {}
    try:

        async def collected() -> bool:
            for recs in (await consumer.getmany(timeout_ms=200)).values():
                for rec in recs:
                    if rec.key in sent_poison:
                        reasons[rec.key] = dict(rec.headers)
            return len(reasons) == len(sent_poison)

        await eventually(collected, timeout=60)
    finally:
        await consumer.stop()
    for key, headers in reasons.items():
        expected = kinds[sent_poison[key]][2]
        assert expected in headers["fabric_error_reason"].decode(), (sent_poison[key], headers["fabric_error_reason"])
    assert fabric.procs["worker"].poll() is None


HTTP_POISON: list[tuple[str, bytes, str, int]] = [
    ("random bytes", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "not valid JSON", 400),
    ("invalid utf-8", b'{"id": "\xff"}', "not valid JSON", 400),
    ("deeply nested", b"[" * 5000 + b"]" * 5000, "not valid JSON", 400),
    ("not an object", b"[1, 2]", "must be a JSON object", 400),
    ("missing type", b'{"id": "1"}', "'type' is required", 400),
]


@pytest.mark.parametrize(("name", "body", "words", "status"), HTTP_POISON, ids=[p[0] for p in HTTP_POISON])
async def test_http_poison_gets_a_4xx_naming_the_problem(
    http: httpx.AsyncClient, name: str, body: bytes, words: str, status: int
) -> None:
    r = await http.post("/v1/events", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    text = r.json()["error"] if "error" in r.json() else r.json()["rejected"][0]["error"]
    assert words in text


async def test_http_event_over_the_size_limit(fabric: Fabric, http: httpx.AsyncClient, tenant: str) -> None:
    event = {"id": "big", "source": "s", "type": "doc.chunked", "subject": "d", "tenant": tenant,
             "data": {"doc_id": "d", "chunk": 0, "text": "x" * (fabric.settings.max_event_bytes + 1)}}  # fmt: skip
    r = await http.post("/v1/events", json=[event])
    assert r.status_code == 400
    assert "over the limit of" in r.json()["rejected"][0]["error"]


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # the standard library also writes integers beyond 64 bits


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=20,
)
envelope_like = st.fixed_dictionaries(
    {"id": st.text(max_size=8), "type": st.sampled_from(["page.updated", "log.entry", "metric.x", "nope"])},
    optional={
        "source": st.text(max_size=5),
        "subject": st.text(max_size=5),
        "data": json_values,
        "sequence": json_values,
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(st.binary(max_size=400), json_values.map(_dumps), st.lists(envelope_like, max_size=5).map(_dumps))
)
def test_fuzzed_http_bodies_never_break_the_edge(fabric: Fabric, body: bytes) -> None:
    r = httpx.post(
        f"{fabric.url}/v1/events",
        content=body,
        headers=bearer(fabric.settings, f"fz{uuid.uuid4().hex[:6]}"),
        timeout=10,
    )
    assert r.status_code in (202, 207, 400), r.text
    answer: dict[str, Any] = r.json()
    if r.status_code == 400 and "error" not in answer:
        assert answer["rejected"] and all(x["pointer"].startswith("/") and x["error"] for x in answer["rejected"])

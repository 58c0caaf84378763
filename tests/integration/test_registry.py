"""Schema evolution through the registry, on a fabric of its own (it changes PageDSL):
an incompatible version is refused naming the field; a compatible one is accepted, a
Confluent-framed Avro record written with its id is decoded by the worker, new readers
see the new field and a consumer pinned to version 1 keeps getting the old shape on
pull, push and MCP."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import httpx
import orjson
import pytest
import websockets
from aiokafka import AIOKafkaProducer
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from fabric.events.codecs import confluent_frame
from fabric.settings import Settings
from fabric.testing import bearer, operator
from tests.integration.conftest import Fabric, eventually, start_fabric, variant

pytestmark = pytest.mark.integration

SR = "application/vnd.schemaregistry.v1+json"


@pytest.fixture
def own_fabric(fabric: Fabric, tmp_path: Path) -> Iterator[Fabric]:
    fab = start_fabric(variant(fabric.settings, tmp_path))
    yield fab
    fab.stop()


def ce_headers(subject: str, seq: int, tenant: str) -> list[tuple[str, bytes]]:
    return [("ce_specversion", b"1.0"), ("ce_id", uuid.uuid4().hex.encode()), ("ce_source", b"lowcode://designer"),
            ("ce_type", b"page.updated"), ("ce_subject", subject.encode()), ("ce_tenant", tenant.encode()),
            ("ce_sequence", str(seq).encode()), ("content-type", b"application/avro")]  # fmt: skip


def avro(schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(copy.deepcopy(schema)), record)
    return buf.getvalue()


async def test_schema_evolution_end_to_end(own_fabric: Fabric, tenant: str) -> None:
    fab = own_fabric
    s: Settings = fab.settings
    admin = operator(s)  # schemas and routing are platform objects
    async with httpx.AsyncClient(base_url=fab.url, headers=admin, timeout=15) as http:
        assert "PageDSL" in (await http.get("/subjects")).json()
        assert (await http.get("/subjects/PageDSL/versions")).json() == [1]
        v1 = json.loads((await http.get("/subjects/fabric.PageDSL/versions/latest")).json()["schema"])
        assert (await http.get("/schemas/ids/12")).json()["schema"] == orjson.dumps(v1).decode()

        # incompatible: a new field without a default; the answer names it
        bad = copy.deepcopy(v1)
        bad["fields"].append({"name": "owner", "type": "string"})
        r = await http.post("/subjects/PageDSL/versions", json={"schema": json.dumps(bad)})
        assert r.status_code == 409 and ".owner" in r.json()["message"], r.text
        check = (
            await http.post("/compatibility/subjects/PageDSL/versions/latest", json={"schema": json.dumps(bad)})
        ).json()
        assert check["is_compatible"] is False and ".owner" in check["messages"][0]
        reader_only = bearer(s, tenant, ["context:read:*"])
        r = await http.post("/subjects/PageDSL/versions", json={"schema": json.dumps(bad)}, headers=reader_only)
        assert r.status_code == 403

        # compatible: the same field, optional
        v2 = copy.deepcopy(v1)
        v2["fields"].append({"name": "owner", "type": ["null", "string"], "default": None})
        r = await http.post("/subjects/PageDSL/versions", json={"schema": json.dumps(v2)})
        assert r.status_code == 200, r.text
        v2_id = r.json()["id"]
        assert v2_id >= 1000 and (await http.get("/subjects/PageDSL/versions")).json() == [1, 2]
        again = await http.post("/subjects/PageDSL/versions", json={"schema": json.dumps(v2)})
        assert again.json()["id"] == v2_id  # registering the same schema twice is idempotent

        # a consumer that declared version 1
        manifest = {"consumer": {"id": "old-copilot", "owner": "copilots",
                                 "consumes": [{"context_type": "PageDSL", "version": 1}]}}  # fmt: skip
        tenant_admin = bearer(s, tenant, ["admin"])  # a manifest is the tenant's: it pins its callers only
        assert (await http.post("/v1/registry/manifests", json=manifest, headers=tenant_admin)).status_code == 201

    old = bearer(s, tenant, ["context:read:*"], sub="old-copilot")
    new = bearer(s, tenant, ["context:read:*"], sub="new-copilot")
    data = {"app": "crm", "page": "p1", "title": "Orders", "components": [], "entities": [], "services": [],
            "route": None, "author": None, "owner": "dana"}  # fmt: skip
    async with (
        websockets.connect(fab.ws_url, additional_headers=old) as old_ws,
        websockets.connect(fab.ws_url, additional_headers=new) as new_ws,
    ):
        for ws in (old_ws, new_ws):
            await ws.send(orjson.dumps({"subscribe": ["page.*"]}).decode())
            await ws.recv()
        # a plain Kafka client writes with the registry's id (CloudEvents binary, Avro data)
        producer = AIOKafkaProducer(bootstrap_servers=s.kafka.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(s.topic("ingest"), confluent_frame(v2_id, avro(v2, data)),
                                         key=f"{tenant}/p1".encode(), headers=ce_headers("p1", 1, tenant))  # fmt: skip
            # and one written with version 1 still reads (owner takes its default)
            v1_data = {k: v for k, v in data.items() if k != "owner"}
            await producer.send_and_wait(s.topic("ingest"), confluent_frame(12, avro(v1, v1_data)),
                                         key=f"{tenant}/p0".encode(), headers=ce_headers("p0", 1, tenant))  # fmt: skip
        finally:
            await producer.stop()
        pushed_old = orjson.loads(await asyncio.wait_for(old_ws.recv(), 20))
        pushed_new = orjson.loads(await asyncio.wait_for(new_ws.recv(), 20))

    async with httpx.AsyncClient(base_url=fab.url, timeout=15) as http:

        async def pulled(who: dict[str, str], subject: str) -> dict[str, Any] | None:
            r = await http.get(f"/v1/contexts/PageDSL/{subject}", headers=who)
            return r.json() if r.status_code == 200 else None

        as_new = await eventually(lambda: pulled(new, "p1"))
        as_old = await eventually(lambda: pulled(old, "p1"))
        assert as_new["event"]["data"]["owner"] == "dana"
        assert "owner" not in as_old["event"]["data"] and as_old["event"]["schemaversion"] == 1
        assert as_old["event"]["data"]["title"] == "Orders"
        from_v1 = await eventually(lambda: pulled(new, "p0"))
        assert from_v1["event"]["data"]["owner"] is None
    # and over MCP
    async with (
        create_mcp_http_client(headers=old) as mcp_http,
        Client(streamable_http_client(f"{fab.url}/mcp", http_client=mcp_http)) as mcp,
    ):
        read = await mcp.read_resource(f"ctx://{tenant}/PageDSL/p1")
        assert "owner" not in json.loads(read.contents[0].text)["event"]["data"]  # type: ignore[union-attr]
    subjects_pushed = {pushed_new["subject"], pushed_old["subject"]}
    assert subjects_pushed <= {"p0", "p1"}
    assert "owner" not in pushed_old["event"]["data"] and "owner" in pushed_new["event"]["data"]

    # routing is versioned in the registry too: a new event type, routed without a restart
    async with httpx.AsyncClient(base_url=fab.url, headers=admin, timeout=15) as http:
        rules = (await http.get("/v1/registry/routing")).json()
        assert rules["version"] == 0 and {"match": "saas.*", "context_type": "SaaSRecord"} in rules["rules"]
        bad = await http.put("/v1/registry/routing", json={"rules": [{"match": "x.*", "context_type": "Nope"}]})
        assert bad.status_code == 400 and "rules[0].context_type" in bad.json()["error"]
        new_rules = [{"match": "ticket.*", "context_type": "SaaSRecord"}, *rules["rules"]]
        assert (await http.put("/v1/registry/routing", json={"rules": new_rules})).json()["version"] == 1
        ticket = {"id": "t-1", "source": "helpdesk://", "type": "ticket.opened", "subject": "T-1", "tenant": tenant,
                  "sequence": 1, "data": {"system": "helpdesk", "object": "Ticket", "record_id": "T-1",
                                          "fields": {"title": "VPN down"}}}  # fmt: skip

        mine = bearer(s, tenant, ["admin"])

        async def routed() -> bool:  # the worker follows the registry; a resend before it has is dead-lettered
            await http.post("/v1/events", json=ticket, headers=mine)
            return (await http.get("/v1/contexts/SaaSRecord/T-1", headers=mine)).status_code == 200

        await eventually(routed, timeout=30, interval=0.5)
        overview = (await http.get("/v1/registry", headers=mine)).json()
        assert overview["schemas"]["PageDSL"] == [1, 2] and overview["routing"]["version"] == 1
        assert f"consumer:{tenant}/old-copilot" in overview["manifests"] and "page-copilot" in overview["policies"]

    # the sink decoded both versions into ClickHouse
    def stored() -> bool:
        out = fab.cli(
            "query",
            f"SELECT count() FROM fabric.events FINAL WHERE tenant = '{tenant}' AND context_type = 'PageDSL'",
            "--format",
            "tsv",
        )
        return out.returncode == 0 and out.stdout.splitlines()[-1].strip() == "2"

    await eventually(stored, timeout=30, interval=0.5)


def test_registry_cli(fabric: Fabric, tmp_path: Path) -> None:
    out = fabric.cli("registry", "subjects")
    assert out.returncode == 0 and "SaaSRecord" in out.stdout.split()
    schema = tmp_path / "saas.avsc"
    doc = json.loads(fabric.cli("registry", "show", "SaaSRecord", "1").stdout.split("\n", 1)[1])
    doc["fields"] = [f for f in doc["fields"] if f["name"] != "system"]  # removing a required field
    schema.write_text(json.dumps(doc))
    fabric.cli("registry", "config", "SaaSRecord", "FULL")
    check = fabric.cli("registry", "check", "SaaSRecord", str(schema))
    assert check.returncode == 1 and "forward: .system" in check.stderr
    assert fabric.cli("registry", "config", "SaaSRecord", "BACKWARD").stdout.strip() == "BACKWARD"

"""Reactions on the real stack: seed 000's order workflow against three loopback systems (an
HTTP "CRM", an MCP "ERP" built with the official SDK, an HTTP "WMS"), a failing step with
retries, compensation and the workflow DLQ, and restricted context refused."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
import yaml

from fabric import kafka
from fabric.dev.procs import free_port
from fabric.dev.stack import Stack
from fabric.events.headers import CACHE_JSON
from fabric.kafka.topics import partitions_of
from fabric.settings import Settings
from fabric.sinks.query import query
from fabric.testing import bearer
from tests.integration.conftest import Fabric, eventually, start_fabric, variant

pytestmark = pytest.mark.integration
TENANT = "shop"


class HttpSystem:
    """A loopback HTTP system that counts calls by Idempotency-Key and answers per path."""

    def __init__(self, answers: dict[str, tuple[int, Any]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        system = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"null")
                system.calls.append((self.path, self.headers.get("Idempotency-Key", ""), {
                    "body": body, "signature": self.headers.get("X-Fabric-Signature", ""),
                    "auth": self.headers.get("Authorization", "")}))  # fmt: skip
                status, answer = system.answers.get(self.path, (200, {"ok": True}))
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(answer).encode())

            do_DELETE = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def keys(self, path: str) -> Counter[str]:
        return Counter(k for p, k, _ in self.calls if p == path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def erp_server() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """An MCP server (official SDK) with check_stock and reserve; records (tool, idempotency key)."""
    from mcp.server import MCPServer

    calls: list[tuple[str, str]] = []
    mcp = MCPServer("erp")

    @mcp.tool()
    def check_stock(sku: str, quantity: int) -> dict[str, Any]:
        calls.append(("check_stock", sku))
        return {"sku": sku, "available": quantity <= 10}

    @mcp.tool()
    def reserve(sku: str, quantity: int) -> dict[str, Any]:
        calls.append(("reserve", sku))
        return {"reservation": f"r-{sku}-{quantity}"}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(mcp.streamable_http_app(), host="127.0.0.1", port=port,
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        import time

        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp", calls
    finally:
        server.should_exit = True
        thread.join(10)


def order_workflow(name: str = "order-processing") -> dict[str, Any]:
    return {
        "name": name, "version": 1,
        "triggers": [{"event": "saas.order.received", "where": {"data.fields.amount": {"$gt": 1000},
                                                                "data.fields.customer_type": "enterprise"}}],
        "phases": [
            {"id": "validation", "type": "parallel", "steps": [
                {"id": "credit", "system": "crm",
                 "http": {"path": "/credit-checks", "body": {"customer": "{{ trigger.data.fields.customer }}",
                                                             "amount": "{{ trigger.data.fields.amount }}"}}},
                {"id": "stock", "system": "erp",
                 "mcp": {"tool": "check_stock", "arguments": {"sku": "{{ trigger.data.fields.sku }}", "quantity": 2}}},
            ], "success_criteria": {"steps.credit.result.approved": True, "steps.stock.result.available": True}},
            {"id": "processing", "type": "sequential", "depends_on": ["validation"], "steps": [
                {"id": "reserve", "system": "erp",
                 "mcp": {"tool": "reserve", "arguments": {"sku": "{{ trigger.data.fields.sku }}", "quantity": 2}}},
                {"id": "pay", "system": "crm", "http": {"path": "/payments", "body": {"order": "{{ trigger.subject }}"}},
                 "compensate": {"system": "crm", "http": {"path": "/refunds",
                                                          "body": {"payment": "{{ steps.pay.result.id }}"}}}},
                {"id": "fulfil", "system": "wms", "retry": {"max_attempts": 3, "backoff": "50ms"},
                 "http": {"path": "/shipments", "body": {"reservation": "{{ steps.reserve.result.reservation }}"}}},
            ]},
            {"id": "confirmation", "type": "broadcast", "depends_on": ["processing"], "steps": [
                {"id": "tell-crm", "system": "crm", "http": {"path": "/notifications"}},
                {"id": "tell-fabric", "event": {"type": "saas.order.confirmed", "subject": "{{ trigger.subject }}",
                                                "data": {"system": "shop", "object": "order",
                                                         "record_id": "{{ trigger.subject }}"}}},
            ]},
        ],
        "error_handling": [{"type": "system_unavailable", "strategy": "circuit_breaker", "failures": 5,
                            "reset_after": "30s", "fallback": "queue_for_retry"}],
    }  # fmt: skip


def order(subject: str, sensitivity: str = "internal") -> dict[str, Any]:
    return {"id": f"o-{uuid.uuid4().hex[:8]}", "source": "shop://orders", "type": "saas.order.received",
            "subject": subject, "sensitivity": sensitivity,
            "data": {"system": "shop", "object": "order", "record_id": subject,
                     "fields": {"amount": 2500, "customer_type": "enterprise", "customer": "c-1", "sku": "sku-9"}}}  # fmt: skip


@pytest.fixture
def systems() -> Iterator[tuple[HttpSystem, HttpSystem, str, list[tuple[str, str]]]]:
    crm = HttpSystem({"/credit-checks": (200, {"approved": True}), "/payments": (200, {"id": "pay-1"})})
    wms = HttpSystem({})
    with erp_server() as (erp_url, erp_calls):
        yield crm, wms, erp_url, erp_calls
    crm.close()
    wms.close()


def register(fab: Fabric, tmp: Path, crm: str, wms: str, erp: str, wf: dict[str, Any]) -> None:
    for sid, kind, url, level in (("crm", "http", crm, "confidential"), ("erp", "mcp", erp, "internal"),
                                  ("wms", "http", wms, "internal")):  # fmt: skip
        spec: dict[str, Any] = {"id": sid, "kind": kind, "endpoint": url, "security_level": level}
        if sid == "crm":
            spec |= {"auth": {"type": "bearer", "secret": "crm-token"}, "signing_secret": "crm-hmac"}
        (tmp / f"{sid}.yaml").write_text(yaml.safe_dump({"system": spec}))
        r = fab.cli("systems", "register", str(tmp / f"{sid}.yaml"), "--tenant", TENANT)
        assert r.returncode == 0, r.stderr
    (tmp / "wf.yaml").write_text(yaml.safe_dump(wf))
    r = fab.cli("workflows", "apply", str(tmp / "wf.yaml"), "--tenant", TENANT)
    assert r.returncode == 0, r.stderr


async def outcomes(s: Settings) -> list[dict[str, Any]]:
    """Every workflow.* event in the Workflow typed topic (what copilots and subscribers see)."""
    c = kafka.consumer(s)
    await c.start()
    out: list[dict[str, Any]] = []
    try:
        tps = await partitions_of(c, s.topic("workflow-outcomes"))
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        ends = await c.end_offsets(tps)
        while [tp for tp in tps if await c.position(tp) < ends[tp]]:
            for recs in (await c.getmany(timeout_ms=500)).values():
                for r in recs:
                    h = dict(r.headers or ())
                    if CACHE_JSON in h:
                        out.append(orjson.loads(h[CACHE_JSON]))
    finally:
        await c.stop()
    return out


def fabric_for(stack_settings: Settings, tmp: Path) -> Fabric:
    s = variant(stack_settings, tmp)
    s = s.model_copy(update={"workflows": s.workflows.model_copy(update={"allowed_hosts": ["127.0.0.1"]})})
    return start_fabric(s, ("worker", "sink", "router"), FABRIC_SECRET__SHOP__CRM_TOKEN="t0ken",
                        FABRIC_SECRET__SHOP__CRM_HMAC="k3y")  # fmt: skip


async def test_order_workflow_end_to_end_and_a_failing_step_compensates(
    stack: Stack, stack_settings: Settings, tmp_path: Path, systems: Any
) -> None:
    crm, wms, erp_url, erp_calls = systems
    fab = fabric_for(stack_settings, tmp_path)
    try:
        register(fab, tmp_path, crm.url, wms.url, erp_url, order_workflow())
        async with httpx.AsyncClient(base_url=fab.url, headers=bearer(fab.settings, TENANT), timeout=15) as http:
            ok = order("order-1")
            assert (await http.post("/v1/events", json=ok)).status_code == 202

            async def completed() -> Any:
                return [o for o in await outcomes(fab.settings) if o["type"] == "workflow.completed"]

            done = (await eventually(completed, 60))[0]
            assert done["data"]["status"] == "succeeded" and done["data"]["trigger_id"] == ok["id"]
            assert [p for p, _, _ in crm.calls][:1] == ["/credit-checks"] or "/credit-checks" in [p for p, _, _ in crm.calls]
            assert {t for t, _ in erp_calls} == {"check_stock", "reserve"}
            assert wms.keys("/shipments").total() == 1
            pay = next(c for c in crm.calls if c[0] == "/payments")
            assert pay[2]["auth"] == "Bearer t0ken" and pay[2]["signature"].startswith("t=")
            assert pay[2]["body"] == {"order": "order-1"}

            # fails for good: retried, then compensated (pay refunded) and dead-lettered
            wms.answers["/shipments"] = (500, {"error": "down"})
            bad = order("order-2")
            assert (await http.post("/v1/events", json=bad)).status_code == 202

            async def failed() -> Any:
                return [o for o in await outcomes(fab.settings) if o["type"] == "workflow.failed"]

            fail = (await eventually(failed, 60))[0]
            assert "fulfil" in fail["data"]["reason"] and "500" in fail["data"]["reason"]
            assert wms.keys("/shipments").most_common(1)[0][1] == 3  # three attempts of one key
            assert [c[2]["body"] for c in crm.calls if c[0] == "/refunds"] == [{"payment": "pay-1"}]

            def steps() -> Any:
                try:
                    _, rows = query(fab.settings, "SELECT step, attempt, outcome FROM fabric.workflow_steps FINAL "
                                    f"WHERE tenant = '{TENANT}' ORDER BY started", open_local=False)  # fmt: skip
                except Exception:
                    return None
                return rows if [r for r in rows if r[2] == "compensated"] else None

            rows = await eventually(steps, 60)
            assert [r[1] for r in rows if r[0] == "fulfil" and r[2] == "failed"] == [1, 2, 3]
            _, runs = query(fab.settings, f"SELECT status FROM fabric.workflow_runs FINAL WHERE tenant = '{TENANT}'",
                            open_local=False)  # fmt: skip
            assert sorted(r[0] for r in runs) == ["failed", "succeeded"]
    finally:
        fab.stop()
    await asyncio.sleep(0)

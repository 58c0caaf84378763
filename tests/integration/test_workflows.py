"""Reactions on the real stack: seed 000's order workflow against three loopback systems (an
HTTP "CRM", an MCP "ERP" built with the official SDK, an HTTP "WMS"), a failing step with
retries, compensation and the workflow DLQ, and restricted context refused."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
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
import websockets
import yaml

from fabric import kafka
from fabric.dev.procs import free_port
from fabric.dev.stack import Stack
from fabric.events.headers import CACHE_JSON
from fabric.kafka.topics import partitions_of
from fabric.settings import Settings
from fabric.sinks.query import query
from fabric.testing import bearer
from tests.integration.conftest import Fabric, Subscription, eventually, start_fabric, variant

pytestmark = pytest.mark.integration
TENANT = "shop"


class HttpSystem:
    """A loopback HTTP system that counts calls by Idempotency-Key and answers per path."""

    def __init__(self, answers: dict[str, tuple[int, Any]], slow: dict[str, float] | None = None) -> None:
        self.answers = answers
        self.slow = slow or {}  # path -> seconds before answering
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.effects: Counter[tuple[str, str]] = Counter()  # (path, key) -> times it took effect
        self.replies: dict[tuple[str, str], tuple[int, Any]] = {}
        system = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"null")
                key = self.headers.get("Idempotency-Key", "")
                system.calls.append((self.path, key, {
                    "body": body, "signature": self.headers.get("X-Fabric-Signature", ""),
                    "auth": self.headers.get("Authorization", ""), "at": time.monotonic()}))  # fmt: skip
                time.sleep(system.slow.get(self.path, 0))
                done = system.replies.get((self.path, key))
                if done is None:  # a repeated key gets the first answer and takes no effect again
                    done = system.answers.get(self.path, (200, {"ok": True}))
                    if done[0] < 300:
                        system.effects[self.path, key] += 1
                        system.replies[self.path, key] = done
                status, answer = done
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
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp", calls
    finally:
        server.should_exit = True
        thread.join(10)


EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "order-processing.yaml"


def order_workflow(name: str = "order-processing") -> dict[str, Any]:
    """Seed 000's order workflow as docs/workflows.md shows it (the file the docs link)."""
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    doc["name"] = name
    return doc


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


async def read_topic(s: Settings, name: str) -> list[tuple[dict[str, bytes], bytes]]:
    """Every record of ``<prefix>.<name>``, read to its end now: (headers, value)."""
    c = kafka.consumer(s)
    await c.start()
    out: list[tuple[dict[str, bytes], bytes]] = []
    try:
        tps = await partitions_of(c, s.topic(name))
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        ends = await c.end_offsets(tps)
        while [tp for tp in tps if await c.position(tp) < ends[tp]]:
            for recs in (await c.getmany(timeout_ms=500)).values():
                out += [(dict(r.headers or ()), r.value or b"") for r in recs]
    finally:
        await c.stop()
    return out


async def outcomes(s: Settings, etype: str | None = None) -> list[dict[str, Any]]:
    """The workflow.* events in the Workflow typed topic (what copilots and subscribers see)."""
    events = [orjson.loads(h[CACHE_JSON]) for h, _ in await read_topic(s, "workflow-outcomes") if CACHE_JSON in h]
    return [e for e in events if etype is None or e["type"] == etype]


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
            done = (await eventually(lambda: outcomes(fab.settings, "workflow.completed"), 60))[0]
            assert done["data"]["status"] == "succeeded" and done["data"]["trigger_id"] == ok["id"]
            paths = [p for p, _, _ in crm.calls]
            # parallel validation, then the sequence in order, then the broadcast
            assert paths == ["/credit-checks", "/payments", "/notifications"]
            assert [t for t, _ in erp_calls] == ["check_stock", "reserve"]
            assert wms.keys("/shipments").total() == 1
            pay = next(c for c in crm.calls if c[0] == "/payments")
            assert pay[2]["auth"] == "Bearer t0ken" and pay[2]["signature"].startswith("t=")
            assert pay[2]["body"] == {"order": "order-1"}

            async def confirmed() -> bool:  # the broadcast's event, back in the fabric as the order's context
                r = await http.get("/v1/contexts/SaaSRecord/order-1")
                return r.status_code == 200 and r.json()["event"]["type"] == "saas.order.confirmed"

            await eventually(confirmed, 30)

            # the ERP's tools, and the workflow's calls checked against their input schemas
            found = fab.cli("systems", "discover", "erp", "--tenant", TENANT)
            assert found.returncode == 0 and "reserve(sku: string, quantity: integer)" in found.stdout, found.stderr
            assert "2 tools; 2 workflow steps call erp; no problems" in found.stdout
            wrong = order_workflow("wrong-args")
            wrong["triggers"] = [{"event": "saas.never.sent"}]
            wrong["phases"][1]["steps"][0]["mcp"]["arguments"] = {"sku": "x", "qty": 2}
            (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(wrong))
            assert fab.cli("workflows", "apply", str(tmp_path / "wrong.yaml"), "--tenant", TENANT).returncode == 0
            found = fab.cli("systems", "discover", "erp", "--tenant", TENANT)
            assert found.returncode == 1
            assert "workflow 'wrong-args', step reserve: tool reserve needs argument 'quantity'" in found.stderr
            assert fab.cli("workflows", "remove", "wrong-args", "--tenant", TENANT).returncode == 0

            # fails for good: retried with backoff, then compensated (pay refunded) and dead-lettered
            wms.answers["/shipments"] = (500, {"error": "down"})
            bad = order("order-2")
            assert (await http.post("/v1/events", json=bad)).status_code == 202
            fail = (await eventually(lambda: outcomes(fab.settings, "workflow.failed"), 60))[0]
            assert "fulfil" in fail["data"]["reason"] and "500" in fail["data"]["reason"]
            tries = [c for c in wms.calls if c[0] == "/shipments" and c[1] != wms.calls[0][1]]
            assert len({c[1] for c in tries}) == 1 and len(tries) == 3  # three attempts of one key
            gaps = [b[2]["at"] - a[2]["at"] for a, b in itertools.pairwise(tries)]
            assert all(g >= 0.025 for g in gaps), gaps  # backoff 50 ms (jitter: at least half)
            assert [c[2]["body"] for c in crm.calls if c[0] == "/refunds"] == [{"payment": "pay-1"}]
            dlq = await eventually(lambda: read_topic(fab.settings, "workflow-dlq"))
            assert [orjson.loads(v)["id"] for _, v in dlq] == [bad["id"]]
            assert b"fulfil" in dlq[0][0]["fabric_error_reason"]
            assert dlq[0][0]["fabric_fallback"] == b"queue_for_retry"

            def steps() -> Any:
                try:
                    _, rows = query(fab.settings, "SELECT step, attempt, outcome, started, ended "
                                    f"FROM fabric.workflow_steps FINAL WHERE tenant = '{TENANT}' ORDER BY started",
                                    open_local=False)  # fmt: skip
                except Exception:
                    return None
                return rows if [r for r in rows if r[2] == "compensated"] else None

            rows = await eventually(steps, 60)
            fulfil = [r for r in rows if r[0] == "fulfil" and r[2] == "failed"]
            assert [r[1] for r in fulfil] == [1, 2, 3]
            assert all(r[3] <= r[4] for r in fulfil) and fulfil[0][3] < fulfil[1][3] < fulfil[2][3]

            # the tenant's runs over HTTP, and one run's step timeline
            async def runs() -> Any:
                r = await http.get("/v1/workflows/runs", headers=reader(fab))
                return r.json()["runs"] if r.status_code == 200 and len(r.json()["runs"]) == 2 else None

            listed = await eventually(runs, 30)
            assert sorted(r["status"] for r in listed) == ["failed", "succeeded"]
            failed_run = next(r for r in listed if r["status"] == "failed")
            one = (await http.get(f"/v1/workflows/runs/{failed_run['run_id']}", headers=reader(fab))).json()
            assert [st["step"] for st in one["steps"]].count("fulfil") == 3
            other = await http.get(f"/v1/workflows/runs/{failed_run['run_id']}",
                                   headers=bearer(fab.settings, "other", ["workflows:read"]))  # fmt: skip
            assert other.status_code == 404
            assert (await http.get("/v1/workflows/runs")).status_code == 403
            shown = fab.cli("workflows", "show", failed_run["run_id"], "--tenant", TENANT)
            assert shown.returncode == 0 and "fulfil" in shown.stdout and "compensated" in shown.stdout, shown.stderr
    finally:
        fab.stop()


def reader(fab: Fabric) -> dict[str, str]:
    return bearer(fab.settings, TENANT, ["workflows:read"])


async def test_worker_killed_mid_sequence_resumes_and_runs_no_step_twice(
    stack: Stack, stack_settings: Settings, tmp_path: Path, systems: Any
) -> None:
    crm, wms, erp_url, erp_calls = systems
    wms.slow["/shipments"] = 4.0  # the worker dies while this call is in flight
    fab = fabric_for(stack_settings, tmp_path)
    try:
        register(fab, tmp_path, crm.url, wms.url, erp_url, order_workflow())
        async with httpx.AsyncClient(base_url=fab.url, headers=bearer(fab.settings, TENANT), timeout=15) as http:
            assert (await http.post("/v1/events", json=order("order-7"))).status_code == 202
            await eventually(lambda: wms.keys("/shipments"), 60)
            fab.kill("worker")
            fab.start("worker")
            done = (await eventually(lambda: outcomes(fab.settings, "workflow.completed"), 90))[0]
            assert done["data"]["status"] == "succeeded"
        # what completed before the kill was not called again; the step in flight was
        # repeated with its key, and took effect once
        assert Counter(p for p, _, _ in crm.calls) == {"/credit-checks": 1, "/payments": 1, "/notifications": 1}
        assert Counter(t for t, _ in erp_calls) == {"check_stock": 1, "reserve": 1}
        assert len(wms.keys("/shipments")) == 1 and wms.effects.total() == 1
        assert "resumed 1 runs" in fab.log("worker")
    finally:
        fab.stop()


async def test_sla_breach_is_pushed_restricted_context_refused_and_a_circuit_opens(
    stack: Stack, stack_settings: Settings, tmp_path: Path
) -> None:
    desk = HttpSystem({})  # a ticket desk cleared for public context only
    ops = HttpSystem({}, slow={"/slow": 1.5})
    flaky = HttpSystem({"/do": (503, {"error": "maintenance"})})
    fab = fabric_for(stack_settings, tmp_path)
    try:
        for sid, url, level in (("desk", desk.url, "public"), ("ops", ops.url, "internal"),
                                ("flaky", flaky.url, "internal")):  # fmt: skip
            (tmp_path / f"{sid}.yaml").write_text(yaml.safe_dump(
                {"system": {"id": sid, "kind": "http", "endpoint": url, "security_level": level}}))  # fmt: skip
            assert fab.cli("systems", "register", str(tmp_path / f"{sid}.yaml"), "--tenant", TENANT).returncode == 0

        def wf(name: str, step: dict[str, Any], **extra: Any) -> dict[str, Any]:
            return {"name": name, "version": 1,
                    "triggers": [{"event": "saas.order.received", "where": {"data.fields.kind": name}}],
                    "phases": [{"id": "work", "steps": [{"id": "call", **step}]}], **extra}  # fmt: skip

        docs = [
            wf("leak", {"system": "desk", "http": {"path": "/tickets",
                                                   "body": {"who": "{{ trigger.data.fields.customer }}"}}}),
            wf("slow", {"system": "ops", "http": {"path": "/slow"}},
               monitoring={"sla_targets": [{"phase": "work", "max_duration": "300ms"}]}),
            wf("flaky", {"system": "flaky", "retry": {"max_attempts": 1}, "http": {"path": "/do"}},
               error_handling=[{"type": "system_unavailable", "strategy": "circuit_breaker", "failures": 2,
                                "reset_after": "60s"}]),
        ]  # fmt: skip
        (tmp_path / "wfs.yaml").write_text(yaml.safe_dump_all(docs))
        r = fab.cli("workflows", "apply", str(tmp_path / "wfs.yaml"), "--tenant", TENANT)
        assert r.returncode == 0, r.stderr

        def trigger(kind: str, sensitivity: str = "internal") -> dict[str, Any]:
            e = order(f"{kind}-{uuid.uuid4().hex[:6]}", sensitivity)
            e["data"]["fields"]["kind"] = kind
            return e

        async with httpx.AsyncClient(base_url=fab.url, headers=bearer(fab.settings, TENANT), timeout=15) as http:
            ws = await websockets.connect(fab.ws_url, additional_headers=bearer(fab.settings, TENANT))
            await ws.send(orjson.dumps({"subscribe": ["workflow.*"]}).decode())
            assert orjson.loads(await ws.recv())["subscribed"] == ["workflow.*"]
            sub = Subscription(ws)
            try:
                assert (await http.post("/v1/events", json=trigger("slow"))).status_code == 202
                await eventually(lambda: len(sub.pushes()) >= 2, 60)
                pushed = [m["event"] for m in sub.pushes()]
                assert [e["type"] for e in pushed[:2]] == ["workflow.sla_breached", "workflow.completed"]
                assert pushed[0]["data"]["phase"] == "work" and pushed[0]["data"]["max_duration_ms"] == 300
            finally:
                await sub.close()

            # restricted context to a public-level system: refused, audited, no call made
            assert (await http.post("/v1/events", json=trigger("leak", "restricted"))).status_code == 202

            async def failed_of(name: str) -> list[dict[str, Any]]:
                return [o for o in await outcomes(fab.settings, "workflow.failed") if o["data"]["workflow"] == name]

            leak = (await eventually(lambda: failed_of("leak"), 60))[0]
            assert "restricted" in leak["data"]["reason"] and "desk" in leak["data"]["reason"]
            assert desk.calls == []

            async def denied() -> Any:
                r = await http.get("/v1/audit", params={"action": "workflow.step", "decision": "deny"},
                                   headers=bearer(fab.settings, TENANT, ["audit:read"]))  # fmt: skip
                return r.json()["records"] if r.status_code == 200 and r.json()["records"] else None

            audit = (await eventually(denied, 60))[0]
            assert "desk" in audit["resource"] and "restricted" in audit["reason"]

            # the circuit: two failures open it, the third run fails fast without a call
            for n in (1, 2, 3):
                assert (await http.post("/v1/events", json=trigger("flaky"))).status_code == 202
                await eventually(lambda n=n: _at_least(failed_of("flaky"), n), 60)
            reasons = [o["data"]["reason"] for o in await failed_of("flaky")]
            assert len(flaky.calls) == 2, reasons
            assert sorted("circuit to flaky is open" in r for r in reasons) == [False, False, True], reasons
            assert sum("503" in r for r in reasons) == 2, reasons
    finally:
        fab.stop()
        for system in (desk, ops, flaky):
            system.close()


async def _at_least(items: Any, n: int) -> bool:
    return len(await items) >= n


async def test_a_burst_of_triggers_all_run(stack: Stack, stack_settings: Settings, tmp_path: Path) -> None:
    """Hundreds of runs saving their state at once: every one finishes (a burst of a thousand
    once left a fifth of its runs stopped, their saves timed out in the producer)."""
    target = HttpSystem({})
    fab = fabric_for(stack_settings, tmp_path)
    try:
        (tmp_path / "target.yaml").write_text(yaml.safe_dump(
            {"system": {"id": "target", "kind": "http", "endpoint": target.url, "security_level": "internal"}}))  # fmt: skip
        assert fab.cli("systems", "register", str(tmp_path / "target.yaml"), "--tenant", TENANT).returncode == 0
        wf = {"name": "burst", "version": 1, "triggers": [{"event": "saas.order.received"}],
              "phases": [{"id": "process", "type": "sequential", "steps": [
                  {"id": f"s{k}", "system": "target", "http": {"path": f"/s{k}", "body": {"id": "{{ trigger.id }}"}}}
                  for k in (1, 2)]}]}  # fmt: skip
        (tmp_path / "wf.yaml").write_text(yaml.safe_dump(wf))
        assert fab.cli("workflows", "apply", str(tmp_path / "wf.yaml"), "--tenant", TENANT).returncode == 0
        burst = [order(f"b-{i}") for i in range(800)]
        async with httpx.AsyncClient(base_url=fab.url, headers=bearer(fab.settings, TENANT), timeout=30) as http:
            for k in range(0, len(burst), 100):
                assert (await http.post("/v1/events", json=burst[k : k + 100])).status_code == 202
        ids = {e["id"] for e in burst}

        def finished() -> int:
            return len(ids & {c[2]["body"]["id"] for c in target.calls if c[0] == "/s2"})

        with contextlib.suppress(AssertionError):
            await eventually(lambda: finished() == len(ids), 120, interval=0.5)
        if finished() != len(ids):  # say where the missing runs stopped
            done = {c[2]["body"]["id"] for c in target.calls if c[0] == "/s2"}
            missing = sorted(ids - done)
            asked = {orjson.loads(v)["trigger"]["id"] for _, v in await read_topic(fab.settings, "workflow-triggers")}
            ended = {o["data"]["trigger_id"]: (o["type"], o["data"]["reason"]) for o in await outcomes(fab.settings)}
            s1 = {c[2]["body"]["id"] for c in target.calls if c[0] == "/s1"}
            pytest.fail(f"{len(missing)} of {len(ids)} runs did not finish: " + "; ".join(
                f"{m}: requested={m in asked} s1_called={m in s1} outcome={ended.get(m)}" for m in missing[:10]))  # fmt: skip
        assert "stopped" not in fab.log("worker")
    finally:
        fab.stop()
        target.close()

"""The bundled scenario: tenant ``acme``'s systems change, a copilot watches.

Three ways in are used, as real systems would: the low-code designer uses the
provider SDK, services post logs and metrics over HTTP as NDJSON, and a database's
change capture and a CRM produce CloudEvents binary-mode records with a plain Kafka
client. One malformed event over HTTP and one poison record on Kafka show the
error paths. ``fabric run`` replays it; ``fabric demo`` replays it against a
running fabric.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from typing import Any

import httpx
import orjson
import websockets

from fabric import kafka
from fabric.demo_reactions import Desk, reactions
from fabric.providers.sdk import Provider
from fabric.settings import Settings
from fabric.testing import bearer

TENANT = "acme"


def _say(line: str) -> None:
    print(line, flush=True)


def page(page_id: str, title: str, n: int, author: str) -> dict[str, Any]:
    return {
        "app": "order-desk", "page": page_id, "title": title, "route": f"/{page_id}",
        "author": author, "entities": ["orders", "customers"], "services": ["orders-api"],
        "components": [
            {"id": f"c{i}", "kind": kind, "props": {"label": f"{kind} {i}", "rows": 25}, "bindings": ["orders"]}
            for i, kind in enumerate(["table", "form", "chart"][: 1 + n % 3])
        ],
    }  # fmt: skip


def log_event(i: int, level: str, msg: str) -> dict[str, Any]:
    return {
        "id": f"log-{os.getpid()}-{i}-{time.time_ns()}", "source": "svc://orders-api", "type": "log.entry",
        "subject": "orders-api", "tenant": TENANT,
        "data": {"service": "orders-api", "level": level, "message": msg, "attributes": {"request": i}},
    }  # fmt: skip


def metric_event(i: int, value: float) -> dict[str, Any]:
    return {
        "id": f"metric-{os.getpid()}-{i}-{time.time_ns()}", "source": "prom://orders-api",
        "type": "metric.sample", "subject": "orders-api:latency_p95", "tenant": TENANT,
        "data": {"name": "latency_p95", "value": value, "unit": "ms", "service": "orders-api",
                 "labels": {"route": "/orders"}},
    }  # fmt: skip


def ce_headers(type_: str, subject: str, source: str, seq: int) -> list[tuple[str, bytes]]:
    return [
        ("ce_specversion", b"1.0"), ("ce_id", f"{source}-{subject}-{seq}".encode()),
        ("ce_source", source.encode()), ("ce_type", type_.encode()), ("ce_subject", subject.encode()),
        ("ce_tenant", TENANT.encode()), ("ce_sequence", str(seq).encode()),
        ("content-type", b"application/json"),
    ]  # fmt: skip


async def _watch(
    settings: Settings, url: str, tenant: str, patterns: list[str], seen: list[dict[str, Any]], ready: asyncio.Event
) -> None:
    async with websockets.connect(url, additional_headers=bearer(settings, tenant)) as ws:
        await ws.send(orjson.dumps({"subscribe": patterns}).decode())
        await ws.recv()
        ready.set()
        async for msg in ws:
            m = orjson.loads(msg)
            if "event" in m:  # a change; heartbeats and lagging notices are not pushes of data
                seen.append(m)


async def scenario(settings: Settings, router_url: str, live_seconds: float = 0.0) -> int:
    """Replay the scenario; returns 0 when every step was observed, 1 otherwise. The
    reaction (``fabric.demo_reactions``) runs beside it: a ticket desk and an ops MCP
    server, and the workflow the latency-SLO composite starts."""
    async with reactions(settings, TENANT) as desk:
        _say("reactions: ticket desk (HTTP) and ops (MCP) on loopback; workflow latency-incident "
             "starts on composite.latency-slo-breach")  # fmt: skip
        return await _scenario(settings, router_url, live_seconds, desk)


async def _scenario(settings: Settings, router_url: str, live_seconds: float, desk: Desk) -> int:
    ws_url = router_url.replace("http", "ws", 1) + "/v1/subscribe"
    pushes: list[dict[str, Any]] = []
    other_tenant: list[dict[str, Any]] = []
    r1, r2 = asyncio.Event(), asyncio.Event()
    watchers = [
        asyncio.create_task(
            _watch(settings, ws_url, TENANT, ["page.*", "schema.*", "saas.*", "composite.*", "workflow.*"], pushes, r1)
        ),
        asyncio.create_task(_watch(settings, ws_url, "globex", ["*"], other_tenant, r2)),
    ]
    await asyncio.wait_for(asyncio.gather(r1.wait(), r2.wait()), 10)
    _say("copilot subscribed: tenant acme to page.* schema.* saas.* composite.* workflow.*; tenant globex to *")
    http = httpx.AsyncClient(base_url=router_url, headers=bearer(settings, TENANT), timeout=10)

    # Sequences start from this run's clock, so a second `make run` on the same data dir (Kafka
    # and the cache keep what the first one sent) still shows new versions, not stale refusals.
    base = int(time.time()) * 100

    # 1. the low-code designer saves pages (provider SDK)
    async with Provider(settings, source="lowcode://designer", tenant=TENANT) as designer:
        events = [
            designer.event(
                "page.updated", "orders-list", page("orders-list", f"Orders v{v}", v, "dana"), sequence=base + v
            )
            for v in (1, 2, 3)
        ] + [
            designer.event(
                "page.created", "customer-detail", page("customer-detail", "Customer", 0, "lee"), sequence=base + 1
            )
        ]
        report = await designer.publish_many(events)
        _say(f"designer (SDK): saved {len(report.sent)} page versions")

    # 2. services post logs and metrics (HTTP, NDJSON); a deploy goes out first
    deploy = log_event(0, "INFO", "deployed orders-api v2.4.1")
    deploy["type"] = "deploy.finished"
    lines = [deploy] + [
        log_event(i, "ERROR" if i % 3 == 0 else "INFO", f"GET /orders took {40 + i * 7} ms") for i in range(9)
    ]
    lines += [metric_event(i, 120.0 + 15 * i) for i in range(6)]
    r = await http.post("/v1/events", content=b"\n".join(orjson.dumps(x) for x in lines),
                        headers={"content-type": "application/x-ndjson"})  # fmt: skip
    _say(f"orders-api (HTTP NDJSON): {r.status_code}, {len(r.json()['accepted'])} accepted")
    bad = log_event(99, "ERROR", "x")
    bad["data"]["level"] = "LOUD"
    r = await http.post("/v1/events", json=bad)
    _say(
        f"a malformed log (HTTP): {r.status_code} {r.json()['rejected'][0]['pointer']}: {r.json()['rejected'][0]['error']}"
    )

    # 3. database change capture and CRM (plain Kafka client, CloudEvents binary mode)
    producer = kafka.producer(settings)
    await kafka.start(settings, producer)
    try:
        topic = settings.topic("ingest")
        schema = {"database": "shop", "table": "orders", "change": "altered", "primary_key": ["id"],
                  "columns": [{"name": "id", "type": "UInt64", "nullable": False},
                              {"name": "status", "type": "String", "nullable": False},
                              {"name": "discount", "type": "Decimal(9,2)", "nullable": True}]}  # fmt: skip
        await producer.send_and_wait(
            topic,
            orjson.dumps(schema),
            key=b"acme/shop.orders",
            headers=ce_headers("schema.altered", "shop.orders", "cdc://shop", base + 7),
        )
        account = {"system": "crm", "object": "Account", "record_id": "A-1042",
                   "fields": {"name": "Initech", "tier": "gold", "arr": 120000,
                              "owner": "jane.doe@initech.example", "phone": "+1 415 555 0142"}}  # fmt: skip
        await producer.send_and_wait(
            topic,
            orjson.dumps(account),
            key=b"acme/A-1042",
            headers=ce_headers("saas.account.updated", "A-1042", "crm://sales", base + 3),
        )
        await producer.send_and_wait(topic, os.urandom(64), key=b"poison")
        _say("cdc + crm (Kafka, CloudEvents headers): schema change, account update, and one poison record")

        # 4. a copilot pulls the page it is helping with
        deadline = time.monotonic() + 30
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            r = await http.get("/v1/contexts/PageDSL/orders-list")
            body = r.json() if r.status_code == 200 else {}
            if body.get("sequence") == base + 3 and len(pushes) >= 6:
                break
            await asyncio.sleep(0.1)
        ok = body.get("sequence") == base + 3
        if ok:
            _say(f"pull PageDSL/orders-list: {body['event']['data']['title']!r} (sequence {body['sequence']}, "
                 f"the newest), as_of {body['as_of']}, age {body['age_ms']} ms, quality {body.get('quality')}")  # fmt: skip
        else:
            _say("pull PageDSL/orders-list: not materialized within 30 s (is the worker running?)")
        for p in [p for p in pushes if not p["type"].startswith(("composite.", "workflow."))][:6]:
            _say(f"  push -> {p['type']:<22} {p['subject']:<16} seq {p['sequence']}")
        _say(f"tenant globex received {len(other_tenant)} pushes (isolation)")
        r = await http.get("/v1/contexts/SaaSRecord/A-1042")
        if r.status_code == 200:
            acct = r.json()
            f = acct["event"]["data"]["fields"]
            _say(f"pull SaaSRecord/A-1042: owner {f.get('owner')!r}, phone {f.get('phone')!r} "
                 f"({acct['event'].get('redacted', 0)} fields masked before the typed topic, cache and ClickHouse), "
                 f"quality {acct.get('quality')}")  # fmt: skip
        counts = {}
        for ct in ("PageDSL", "SQLSchema", "LogEntry", "Metric", "SaaSRecord"):
            r = await http.get(f"/v1/contexts/{ct}", params={"limit": 100})
            counts[ct] = len(r.json()["items"])
        _say("subjects in the cache: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        r = await http.post("/v1/assemble", json={"subject": "orders-list", "policy": "page-copilot"})
        if r.status_code == 200:
            b = r.json()
            _say(f"assemble orders-list (policy {b['policy']} v{b['version']}): "
                 f"{b['used_tokens']} of {b['budget_tokens']} tokens")  # fmt: skip
            for sec in b["sections"]:
                names = ", ".join(dict.fromkeys(i["subject"] for i in sec["items"]))
                _say(f"  {sec['context_type']:<10} {len(sec['items'])} item(s) {names}")
        narrow = bearer(settings, TENANT, ["context:read:LogEntry"])
        r = await http.get("/v1/contexts/PageDSL/orders-list", headers=narrow)
        _say(f"a token scoped to LogEntry pulls the page: {r.status_code} {r.json().get('error')}")

        # 5. live: a trickle of logs and metrics a person can watch; now and then latency spikes,
        # and the CEP patterns report what they see (composite.* pushes)
        started, i = time.monotonic(), 100
        flow: Counter[str] = Counter()
        shown = reacted = 0
        while time.monotonic() - started < live_seconds:
            latency = random.uniform(700, 1200) if (i // 10) % 4 == 3 else random.uniform(80, 400)
            burst = [metric_event(i, latency)] + [
                log_event(i + k, random.choice(["INFO", "INFO", "WARN", "ERROR"]), "tick") for k in range(3)
            ]
            r = await http.post("/v1/events", content=b"\n".join(orjson.dumps(x) for x in burst),
                                headers={"content-type": "application/x-ndjson"})  # fmt: skip
            flow.update(e["type"] for e in burst)
            i += 10
            win = (await http.get("/v1/contexts/Metric/orders-api:latency_p95")).json()
            _say(f"[live] posted {dict(flow)}; latency_p95 now {win['event']['data']['value']:.0f} ms "
                 f"(window {len(win['window'])}), pushes to acme so far: {len(pushes)}")  # fmt: skip
            found = [p for p in pushes if p["type"].startswith("composite.")]
            for c in found[shown:]:
                d = c["event"]["data"]
                _say(f"  COMPOSITE {c['type']} on {d['key']}: {len(d['events'])} events, {d['aggregates']}")
            shown = len(found)
            told = [p for p in pushes if p["type"].startswith("workflow.") or p["type"] == "saas.incident.opened"]
            for p in told[reacted:]:
                d = p["event"]["data"]
                if p["type"] == "saas.incident.opened":
                    f = d["fields"]
                    _say(f"  INCIDENT {d['record_id']} for {f['service']} (last deploy {f['last_deploy']} "
                         f"by {f['deployed_by']}), in the fabric as SaaSRecord/{p['subject']}")  # fmt: skip
                else:
                    _say(f"  WORKFLOW {p['type']} {d['workflow']} run {d['run_id']}: {d['status']} "
                         f"in {d['duration_ms']} ms, steps {d['steps']} {d['reason']}".rstrip())  # fmt: skip
            reacted = len(told)
            await asyncio.sleep(2)
        return 0 if ok and not other_tenant else 1
    finally:
        await producer.stop()
        await http.aclose()
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)

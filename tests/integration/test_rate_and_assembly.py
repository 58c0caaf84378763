"""Rate limits shared by two router processes, and context assembly on the demo scenario."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from fabric.client import ContextClient, Forbidden, RateLimited
from fabric.demo import TENANT, scenario
from fabric.settings import RateLimit, Settings
from fabric.testing import bearer
from tests.integration.conftest import Fabric, answers, eventually, free_port, variant

pytestmark = pytest.mark.integration


async def test_a_burst_is_limited_across_two_routers_sharing_redis(fabric: Fabric, tmp_path: Path) -> None:
    limited = f"rl{uuid.uuid4().hex[:8]}"
    base = variant(fabric.settings, tmp_path)
    sec = base.security.model_copy(
        update={"tenant_rates": {limited: RateLimit(rate=2, burst=10)}, "token_rate": RateLimit(rate=1000, burst=1000)}
    )
    routers = []
    for i in range(2):
        s: Settings = base.model_copy(
            update={"security": sec, "router": base.router.model_copy(update={"port": free_port()})}
        )
        r = Fabric(s, tmp_path / f"logs{i}")
        r.start("router")
        routers.append(r)
    try:
        for r in routers:
            await eventually(lambda r=r: answers(r.url))
        token = bearer(base, limited)
        other = bearer(base, f"ok{uuid.uuid4().hex[:8]}")
        replies: list[tuple[int, int, str | None]] = []
        async with httpx.AsyncClient(timeout=10) as c:
            burst_started = time.monotonic()
            for i in range(40):  # alternating, as fast as the client goes
                router = routers[i % 2]
                resp = await c.get(f"{router.url}/v1/contexts/PageDSL/p{i}", headers=token)
                replies.append((i % 2, resp.status_code, resp.headers.get("retry-after")))
            # another tenant has its own bucket
            unaffected = await c.get(f"{routers[0].url}/v1/contexts/PageDSL/x", headers=other)
        allowed = [a for a in replies if a[1] != 429]
        refused = [a for a in replies if a[1] == 429]
        # 10 in the bucket, refilled at 2/s while the burst lasts: both routers drew from one bucket
        refill = 2 * (time.monotonic() - burst_started)
        assert 10 <= len(allowed) <= 10 + refill + 1, (refill, replies)
        assert {a[0] for a in refused} == {0, 1}, "both routers must refuse once the shared bucket is empty"
        assert all(ra is not None and int(ra) >= 1 for _, _, ra in refused)
        assert unaffected.status_code != 429
        # and the SDK turns it into RateLimited with the wait
        async with ContextClient(routers[1].url, token["Authorization"].removeprefix("Bearer ")) as client:
            with pytest.raises(RateLimited) as e:
                for _ in range(20):
                    await client.list("PageDSL")
            assert e.value.retry_after >= 1
        async with httpx.AsyncClient(timeout=10) as c:

            async def allowed() -> bool:
                r = await c.get(f"{routers[0].url}/v1/contexts/PageDSL/p0", headers=token)
                return r.status_code != 429

            await eventually(allowed, timeout=5, interval=0.2)  # refilled: allowed again
    finally:
        for r in routers:
            r.stop()


async def test_assembly_on_the_demo_scenario(fabric: Fabric) -> None:
    s = fabric.settings
    assert await scenario(s, fabric.url) == 0
    reader = bearer(s, TENANT)["Authorization"].removeprefix("Bearer ")
    admin = bearer(s, TENANT, ["admin"])
    async with ContextClient(fabric.url, reader) as client:
        policies = {p["name"]: p for p in await client.policies()}
        assert policies["page-copilot"]["sections"] == ["PageDSL", "SQLSchema", "Composite", "LogEntry", "Metric"]

        async def logs_in() -> Any:
            b = await client.assemble("orders-list", policy="page-copilot")
            return b if b.sections[3].items else None

        bundle = await eventually(logs_in)
        assert [sec.context_type for sec in bundle.sections] == policies["page-copilot"]["sections"]
        page, schema, _composites, logs, metrics = bundle.sections
        assert [(i.subject, i.event["data"]["title"]) for i in page.items] == [("orders-list", "Orders v3")]
        assert [i.subject for i in schema.items] == ["shop.orders"]  # the page's entity 'orders'
        assert logs.items and len(logs.items) <= 5
        assert all(i.event["data"]["level"] == "ERROR" and i.subject == "orders-api" for i in logs.items)
        times = [i.event["time"] for i in logs.items]
        assert times == sorted(times, reverse=True)  # newest first
        assert [i.subject for i in metrics.items] == ["orders-api:latency_p95"] * len(metrics.items)
        assert 0 < bundle.used_tokens <= bundle.budget_tokens
        assert sum(i.tokens for i in bundle.items()) == bundle.used_tokens
        for item in bundle.items():
            assert item.provenance.id == item.event["id"] and item.provenance.source == item.event["source"]
            assert item.as_of.endswith("Z") and item.stale is False  # freshness travels with every item

        # a small budget keeps the policy order and says what it left out
        async with httpx.AsyncClient(base_url=fabric.url, timeout=10) as http:
            inline = {"name": "tiny", "budget_tokens": 400,
                      "sections": [{"context_type": "PageDSL", "subjects": "$subject"},
                                   {"context_type": "LogEntry", "subjects": ["orders-api"], "top_k": 20}]}  # fmt: skip
            r = await http.post("/v1/assemble", json={"subject": "orders-list", "inline": inline}, headers=admin)
            tiny = r.json()
            assert r.status_code == 200, r.text
            assert tiny["used_tokens"] <= 400 and tiny["sections"][0]["items"]
            assert tiny["sections"][1]["omitted"]["budget"] > 0
            # inline policies need the admin scope
            r = await http.post("/v1/assemble", json={"subject": "orders-list", "inline": inline},
                                headers={"Authorization": f"Bearer {reader}"})  # fmt: skip
            assert r.status_code == 403

            # policies are versioned: a new version is served, the old one stays addressable
            name = f"lite-{uuid.uuid4().hex[:6]}"
            v1 = {"sections": [{"context_type": "PageDSL", "subjects": "$subject"}]}
            v2 = {"sections": [{"context_type": "LogEntry", "subjects": ["orders-api"], "top_k": 1}]}
            assert (await http.put(f"/v1/policies/{name}", json=v1, headers=admin)).json()["version"] == 1
            assert (await http.put(f"/v1/policies/{name}", json=v2, headers=admin)).json()["version"] == 2
            bad = await http.put(f"/v1/policies/{name}", json={"sections": [{"context_type": "X", "top_k": 0}]},
                                 headers=admin)  # fmt: skip
            assert bad.status_code == 400 and "top_k" in bad.json()["error"]
            r = await http.put(f"/v1/policies/{name}", json=v1, headers={"Authorization": f"Bearer {reader}"})
            assert r.status_code == 403
        listed = {p["name"]: p for p in await client.policies()}
        assert listed[name]["version"] == 2 and listed[name]["versions"] == [1, 2]
        assert [s.context_type for s in (await client.assemble("orders-list", policy=name)).sections] == ["LogEntry"]
        old = await client.assemble("orders-list", policy=f"{name}@1")
        assert old.version == 1 and old.sections[0].items[0].subject == "orders-list"

    # a token that may read only logs gets only the log section filled
    logs_only = bearer(s, TENANT, ["context:read:LogEntry"])["Authorization"].removeprefix("Bearer ")
    async with ContextClient(fabric.url, logs_only) as narrow:
        b = await narrow.assemble("orders-list", policy="page-copilot")
        assert not b.sections[0].items and b.sections[0].omitted.withheld == 1
        with pytest.raises(Forbidden):
            await narrow.get("PageDSL", "orders-list")

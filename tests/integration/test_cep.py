"""Composites end to end: events over HTTP -> worker's CEP stage -> ctx.composites -> cache,
push and ClickHouse."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets

from fabric.dev.stack import Stack
from fabric.settings import Settings
from fabric.testing import bearer
from tests.integration.conftest import eventually, start_fabric, variant

pytestmark = pytest.mark.integration


def log(tenant: str, t: datetime, etype: str = "log.entry", level: str = "ERROR") -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "source": "svc://orders-api", "type": etype, "subject": "orders-api",
            "tenant": tenant, "time": t.isoformat(),
            "data": {"service": "orders-api", "level": level, "message": f"{etype} at {t}"}}  # fmt: skip


async def test_deploy_then_error_burst_becomes_a_composite(
    stack: Stack, stack_settings: Settings, tmp_path: Path
) -> None:
    s = variant(stack_settings, tmp_path)
    fab = start_fabric(s)
    try:
        async with (
            httpx.AsyncClient(base_url=fab.url, headers=bearer(fab.settings, "acme"), timeout=15) as http,
            websockets.connect(fab.ws_url, additional_headers=bearer(fab.settings, "acme")) as ws,
        ):
            await ws.send(orjson.dumps({"subscribe": ["composite.*"]}).decode())
            await ws.recv()
            t0 = datetime.now(UTC)
            events = [log("acme", t0, "deploy.finished", "INFO")] + [
                log("acme", t0 + timedelta(seconds=1 + i)) for i in range(5)
            ]
            events.append(log("acme", t0 + timedelta(seconds=12), level="INFO"))  # moves event time past the lateness
            assert (await http.post("/v1/events", json=events)).status_code == 202

            async def pulled() -> dict[str, Any] | None:
                r = await http.get("/v1/contexts/Composite/deploy-then-error-burst/orders-api")
                return r.json() if r.status_code == 200 else None

            body = await eventually(pulled, timeout=60)
            data = body["event"]["data"]
            assert body["event"]["type"] == "composite.deploy-then-error-burst"
            assert data["pattern"] == "deploy-then-error-burst" and data["key"] == "orders-api"
            assert [e["id"] for e in data["events"]] == [e["id"] for e in events[:6]]
            assert all(e["topic"] == s.topic("log") and e["offset"] is not None for e in data["events"])
            push = orjson.loads(await ws.recv())
            assert (
                push["type"] == "composite.deploy-then-error-burst"
                and push["subject"] == "deploy-then-error-burst/orders-api"
            )
            listed = (
                await http.get("/v1/composites", params={"pattern": "deploy-then-error-burst", "since": t0.isoformat()})
            ).json()
            assert [i["subject"] for i in listed["items"]] == ["deploy-then-error-burst/orders-api"]
            later = (t0 + timedelta(hours=1)).isoformat()
            assert (await http.get("/v1/composites", params={"since": later})).json()["items"] == []
            assert (await http.get("/v1/composites", params={"pattern": "latency-slo-breach"})).json()["items"] == []
            assert (await http.get("/v1/composites", params={"since": "yesterday"})).status_code == 400
            # another tenant sees none of it
            other = await http.get(
                "/v1/contexts/Composite/deploy-then-error-burst/orders-api", headers=bearer(fab.settings, "globex")
            )
            assert other.status_code == 404
            listed_other = await http.get("/v1/composites", headers=bearer(fab.settings, "globex"))
            assert listed_other.json()["items"] == []

        def stored() -> list[dict[str, Any]]:
            r = fab.cli(
                "query",
                "SELECT type, subject FROM fabric.events FINAL WHERE context_type = 'Composite'",
                "--format",
                "json",
            )
            assert r.returncode == 0, r.stderr
            return list(orjson.loads(r.stdout))

        assert await eventually(stored, timeout=60, interval=0.5) == [
            {"type": "composite.deploy-then-error-burst", "subject": "deploy-then-error-burst/orders-api"}
        ]
    finally:
        fab.stop()

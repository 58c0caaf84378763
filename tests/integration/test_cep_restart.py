"""A worker killed with SIGKILL halfway through a sequence: after the restart the composite
still fires, once, when the rest of the sequence arrives."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fabric.dev.stack import Stack
from fabric.kafka.compacted import read_compacted
from fabric.settings import Settings
from fabric.testing import bearer
from tests.integration.conftest import eventually, start_fabric, variant

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def log(t: datetime, etype: str = "log.entry", level: str = "ERROR") -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "source": "svc://orders-api", "type": etype, "subject": "orders-api",
            "tenant": "acme", "time": t.isoformat(), "data": {"service": "orders-api", "level": level, "message": "m"}}  # fmt: skip


async def test_sequence_survives_a_killed_worker(stack: Stack, stack_settings: Settings, tmp_path: Path) -> None:
    s = variant(stack_settings, tmp_path)
    fab = start_fabric(s, ("worker", "router"))
    t0 = datetime.now(UTC)
    first_half = [log(t0, "deploy.finished", "INFO"), log(t0 + timedelta(seconds=1)), log(t0 + timedelta(seconds=2))]
    second_half = [log(t0 + timedelta(seconds=3 + i)) for i in range(3)] + [
        log(t0 + timedelta(seconds=15), level="INFO")
    ]
    try:
        async with httpx.AsyncClient(base_url=fab.url, headers=bearer(fab.settings, "acme"), timeout=15) as http:
            assert (await http.post("/v1/events", json=first_half)).status_code == 202

            async def checkpointed() -> bool:  # a checkpoint has read the first half
                saved = await read_compacted(s, s.topic("cep-checkpoints"))
                mine = [orjson.loads(v) for k, v in saved.items() if v and k.startswith(f"{s.kafka.group_prefix}.cep.")]
                # the key's partition holds the 3 events, then the tick written after them
                return any(c["processed"] >= 4 for c in mine)

            await eventually(checkpointed, timeout=30)
            # nothing fired yet: the sequence is only half there
            assert (await http.get("/v1/contexts/Composite/deploy-then-error-burst/orders-api")).status_code == 404
            fab.kill("worker")
            fab.start("worker")
            assert (await http.post("/v1/events", json=second_half)).status_code == 202

            async def composite() -> dict[str, Any] | None:
                r = await http.get("/v1/contexts/Composite/deploy-then-error-burst/orders-api")
                return r.json() if r.status_code == 200 else None

            body = await eventually(composite, timeout=60)
            assert [e["id"] for e in body["event"]["data"]["events"]] == [e["id"] for e in first_half + second_half[:3]]
            assert body["changes"] == 1  # fired once
            assert "restored" in fab.log("worker")
    finally:
        fab.stop()

"""Hot reload: a pattern applied while events flow starts matching without a restart;
removing it stops it; a bad pattern file is refused with the field named."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from fabric.dev.stack import Stack
from fabric.settings import Settings
from fabric.testing import bearer
from tests.integration.conftest import eventually, start_fabric, variant

pytestmark = pytest.mark.integration

PATTERN = """
patterns:
  - name: saas-churn-signal
    key: subject
    allowed_lateness: 0s
    aggregate:
      where: {type: saas.ticket.opened}
      fn: count
      window: {kind: sliding, size: 10m}
      when: {$gte: 3}
"""


def ticket(subject: str, t: datetime) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "source": "crm://desk", "type": "saas.ticket.opened", "subject": subject,
            "tenant": "acme", "time": t.isoformat(),
            "data": {"system": "desk", "object": "Ticket", "record_id": uuid.uuid4().hex[:8], "fields": {}}}  # fmt: skip


async def test_apply_and_remove_a_pattern_while_events_flow(
    stack: Stack, stack_settings: Settings, tmp_path: Path
) -> None:
    s = variant(stack_settings, tmp_path)
    fab = start_fabric(s, ("worker", "router"))
    t0 = datetime.now(UTC)
    try:
        async with httpx.AsyncClient(base_url=fab.url, headers=bearer(fab.settings, "acme"), timeout=15) as http:

            async def post(subject: str, n: int, offset: int) -> None:
                batch = [ticket(subject, t0 + timedelta(seconds=offset + i)) for i in range(n)]
                assert (await http.post("/v1/events", json=batch)).status_code == 202

            async def composite(subject: str) -> dict[str, Any] | None:
                r = await http.get(f"/v1/contexts/Composite/saas-churn-signal/{subject}")
                return r.json() if r.status_code == 200 else None

            await post("A-1", 3, 0)  # before the pattern exists: nothing
            await eventually(lambda: _pulled(http, "A-1"))

            bad = tmp_path / "bad.yaml"
            bad.write_text(PATTERN.replace("fn: count", "fn: median"))
            r = fab.cli("patterns", "apply", str(bad))
            assert r.returncode == 1 and "pattern 'saas-churn-signal', aggregate.fn: must be one of" in r.stderr

            good = tmp_path / "good.yaml"
            good.write_text(PATTERN)
            r = fab.cli("patterns", "apply", str(good))
            assert r.returncode == 0 and "applied saas-churn-signal" in r.stdout
            assert "saas-churn-signal" in fab.cli("patterns", "list").stdout

            # the worker picks it up without a restart: the next tickets match
            await eventually(
                lambda: "patterns now" in fab.log("worker") and "saas-churn-signal v1" in fab.log("worker")
            )
            await post("B-2", 3, 10)
            found = await eventually(lambda: composite("B-2"), timeout=30)
            assert found["event"]["data"]["aggregates"]["count"] == 3
            assert await composite("A-1") is None  # state starts when the pattern does

            # remove it, and apply a probe that fires on a ticket closed after the opened ones
            # (same subject, same partition, so the CEP stage has seen them when the probe fires)
            probe = tmp_path / "probe.yaml"
            probe.write_text(PATTERN.replace("saas-churn-signal", "probe").replace("saas.ticket.opened", "saas.ticket.closed")
                             .replace("$gte: 3", "$gte: 1"))  # fmt: skip
            r = fab.cli("patterns", "apply", "--replace", str(probe))
            assert r.returncode == 0 and "removed saas-churn-signal" in r.stdout and "applied probe" in r.stdout
            await eventually(lambda: fab.log("worker").count("patterns now") >= 2)
            await post("C-3", 3, 20)
            closed = ticket("C-3", t0 + timedelta(seconds=30))
            closed["type"] = "saas.ticket.closed"
            assert (await http.post("/v1/events", json=closed)).status_code == 202
            await eventually(lambda: _probe(http, "C-3"), timeout=30)
            assert await composite("C-3") is None
            assert fab.procs["worker"].poll() is None
    finally:
        fab.stop()


async def _probe(http: httpx.AsyncClient, subject: str) -> bool:
    return (await http.get(f"/v1/contexts/Composite/probe/{subject}")).status_code == 200


async def _pulled(http: httpx.AsyncClient, subject: str) -> bool:
    return (await http.get(f"/v1/contexts/SaaSRecord/{subject}")).status_code == 200

"""CEP across three worker processes: a deploy and the errors after it arrive on
different ingest partitions (different subjects), are re-keyed by the pattern's key
(the service) and meet in one matcher. One worker is SIGKILLed halfway through every
sequence; each composite still fires, exactly once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fabric import kafka
from fabric.dev.stack import Stack
from fabric.kafka.topics import partitions_of
from fabric.settings import Settings
from fabric.testing import bearer
from tests.integration.conftest import Fabric, eventually, variant

pytestmark = pytest.mark.integration

PATTERN = "deploy-then-error-burst"
SERVICES = 12


def log(tenant: str, service: str, subject: str, t: datetime, etype: str = "log.entry", level: str = "ERROR") -> Any:
    return {"id": uuid.uuid4().hex, "source": "svc://fleet", "type": etype, "subject": subject, "tenant": tenant,
            "time": t.isoformat(), "data": {"service": service, "level": level, "message": "m"}}  # fmt: skip


async def caught_up(s: Settings, group: str, topic: str) -> bool:
    """Whether ``group`` has committed every record ``topic`` holds, committed or still in
    an open transaction (what follows its committed offsets may only be markers)."""
    c = kafka.consumer(s, group=group)
    await kafka.start(s, c)
    reader = kafka.consumer(s, isolation_level="read_uncommitted")
    await kafka.start(s, reader)
    try:
        parts = await partitions_of(c, topic)
        reader.assign(parts)
        for tp in parts:
            reader.seek(tp, await c.committed(tp) or 0)
        return not await reader.getmany(timeout_ms=1000)
    finally:
        await c.stop()
        await reader.stop()


async def settled(s: Settings) -> bool:
    """Every event posted so far has gone through route, keying and matching."""
    p = s.kafka.group_prefix
    for group, topic in ((f"{p}.route", s.topic("ingest")), (f"{p}.cep-keys", s.topic("log")),
                         (f"{p}.cep", s.topic("cep-keyed"))):  # fmt: skip
        if not await caught_up(s, group, topic):
            return False
    return True


async def records(s: Settings, topic: str) -> list[Any]:
    """Every record of a topic, as read_committed readers see them."""
    c = kafka.consumer(s)
    await kafka.start(s, c)
    try:
        parts = await partitions_of(c, s.topic(topic))
        c.assign(parts)
        await c.seek_to_beginning(*parts)
        ends = await c.end_offsets(parts)
        out = []
        while True:
            batch = await c.getmany(timeout_ms=1000)
            if not batch and all([await c.position(tp) >= ends[tp] for tp in parts]):
                return out
            out += [r for recs in batch.values() for r in recs]
    finally:
        await c.stop()


async def composites_in_topic(s: Settings, tenant: str) -> list[str]:
    """Ids of the tenant's composites in the typed topic."""
    events = [orjson.loads(dict(r.headers)["fabric_cache_json"]) for r in await records(s, "composites")]
    return [e["id"] for e in events if e["tenant"] == tenant]


async def test_correlation_across_three_workers_survives_a_killed_one(
    stack: Stack, stack_settings: Settings, tmp_path: Path
) -> None:  # fmt: skip
    s = variant(stack_settings, tmp_path)
    fab = Fabric(s, s.data_dir / "logs")
    tenant = f"tn{uuid.uuid4().hex[:8]}"
    services = [f"svc-{i}" for i in range(SERVICES)]
    t0 = datetime.now(UTC)
    try:
        for i in range(3):
            fab.start("worker", name=f"worker-{i}")
        fab.start("router")
        fab.wait_ready()
        async with httpx.AsyncClient(base_url=fab.url, headers=bearer(s, tenant), timeout=15) as http:
            # first half: the deploy (its own subject) and 2 of the 5 errors, each error from
            # another host subject, so they are spread over the ingest partitions
            first = [log(tenant, svc, f"deploy-{svc}", t0, "deploy.finished", "INFO") for svc in services]
            first += [log(tenant, svc, f"{svc}-host-{j}", t0 + timedelta(seconds=1 + j)) for svc in services
                      for j in range(2)]  # fmt: skip
            assert (await http.post("/v1/events", json=first)).status_code == 202
            # every event re-keyed and read by the matchers, then one worker dies
            await eventually(lambda: settled(s), timeout=60)
            fab.kill("worker-1")
            second = [log(tenant, svc, f"{svc}-host-{j}", t0 + timedelta(seconds=1 + j)) for svc in services
                      for j in range(2, 5)]  # fmt: skip
            assert (await http.post("/v1/events", json=second)).status_code == 202
            await eventually(lambda: settled(s), timeout=60)
            # then later events on every log partition move the watermark past the bursts (sent
            # with the errors, they could overtake them: a partition quiet for 10 s no longer
            # holds the watermark back, and the errors would be late)
            clock = [log(tenant, "clock", f"tick-{k}", t0 + timedelta(seconds=30), level="INFO") for k in range(24)]
            assert (await http.post("/v1/events", json=clock)).status_code == 202

            async def fired(svc: str) -> dict[str, Any] | None:
                r = await http.get(f"/v1/contexts/Composite/{PATTERN}/{svc}")
                return r.json() if r.status_code == 200 else None

            for svc in services:
                try:
                    body = await eventually(lambda svc=svc: fired(svc), timeout=120)
                except AssertionError:
                    late = await records(s, "late")
                    raise AssertionError(
                        f"{svc} did not fire; {len(late)} events reported late: {[r.value for r in late[:3]]}"
                    ) from None
                mine = [e["id"] for e in first + second if e["data"]["service"] == svc]
                got = [e["id"] for e in body["event"]["data"]["events"]]
                assert got == mine[:6], (svc, got, mine)
                assert body["changes"] == 1, f"{svc}: fired {body['changes']} times"
        # exactly once in the topic too (the cache would hide a double with the same id)
        await eventually(lambda: settled(s), timeout=60)
        ids = await composites_in_topic(s, tenant)
        assert len(ids) == SERVICES and len(set(ids)) == SERVICES, ids
        assert "restored" in "".join(fab.log(f"worker-{i}") for i in (0, 2)), "a partition moved with its state"
    finally:
        fab.stop()

"""``"batch": true``: a subscriber that is behind gets the changes waiting for it in one frame
(a JSON array, in feed order), and one that keeps up gets one change per frame; nothing is
lost or reordered either way."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import orjson
import pytest

from fabric.testing import bearer
from tests.integration.conftest import Fabric, eventually
from tests.integration.rawws import RawWebSocket

pytestmark = pytest.mark.integration

EVENTS = 300


def log_events(tenant: str, start: int, n: int) -> list[dict[str, object]]:
    return [{"id": uuid.uuid4().hex, "source": "svc://api", "type": "log.entry", "subject": "api-1", "tenant": tenant,
             "data": {"service": "api", "level": "INFO", "message": "m", "attributes": {"n": start + i}}}
            for i in range(n)]  # fmt: skip


async def test_a_subscriber_behind_gets_several_changes_per_frame_in_order(
    fabric: Fabric, http: httpx.AsyncClient, tenant: str, subscribe: object
) -> None:
    plain = await subscribe(tenant, ["log.*"])  # type: ignore[operator]
    batched = RawWebSocket(fabric.settings.router.port, "/v1/subscribe", bearer(fabric.settings, tenant))
    try:
        batched.send_text(orjson.dumps({"subscribe": ["log.*"], "batch": True}).decode())
        assert "subscribed" in orjson.loads(batched.recv_text())
        # one change, read as it comes: a frame of one
        assert (await http.post("/v1/events", json=log_events(tenant, 0, 1))).status_code == 202
        first = orjson.loads(await asyncio.to_thread(batched.recv_text, 10))
        assert isinstance(first, list) and len(first) == 1 and first[0]["event"]["data"]["attributes"]["n"] == 0
        # then it reads nothing while the rest arrive: they wait in its queue
        for start in range(1, EVENTS, 100):
            assert (
                await http.post("/v1/events", json=log_events(tenant, start, min(100, EVENTS - start)))
            ).status_code == 202
        await eventually(lambda: len(plain.pushes()) >= EVENTS, timeout=30)
        frames = []
        received: list[int] = [0]
        while len(received) < EVENTS:
            frame = orjson.loads(await asyncio.to_thread(batched.recv_text, 10))
            assert isinstance(frame, list), frame
            frames.append(len(frame))
            received += [m["event"]["data"]["attributes"]["n"] for m in frame]
        assert received == list(range(EVENTS)), "every change once, in feed order"
        assert [p["event"]["data"]["attributes"]["n"] for p in plain.pushes()] == received
        assert max(frames) > 1, f"a subscriber behind gets several changes per frame: {frames}"
        assert len(frames) < EVENTS - 1
    finally:
        batched.close()


async def test_batch_must_be_a_boolean(fabric: Fabric, tenant: str) -> None:
    ws = RawWebSocket(fabric.settings.router.port, "/v1/subscribe", bearer(fabric.settings, tenant))
    try:
        ws.send_text(orjson.dumps({"subscribe": ["log.*"], "batch": "yes"}).decode())
        assert orjson.loads(await asyncio.to_thread(ws.recv_text, 10)) == {"error": "batch must be true or false"}
    finally:
        ws.close()

"""A subscriber that reads nothing for 30 s neither delays the others nor goes unwarned: its
changes are coalesced to the latest per subject and it is told how many were replaced."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import orjson
import pytest

from fabric.testing import bearer
from tests.integration.conftest import Fabric, eventually
from tests.integration.rawws import RawWebSocket

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STALL_S = 30
RATE = 200  # events/s
PAYLOAD = "x" * 4000
SUBJECTS = 50


async def test_slow_subscriber_is_isolated_and_told_it_fell_behind(
    fabric: Fabric, http: httpx.AsyncClient, tenant: str, subscribe: object
) -> None:
    fast = await subscribe(tenant, ["log.*"])  # type: ignore[operator]
    # a client that stops reading: its bytes stay in a small kernel buffer
    slow = RawWebSocket(fabric.settings.router.port, "/v1/subscribe", bearer(fabric.settings, tenant))
    slow.send_text(orjson.dumps({"subscribe": ["log.*"]}).decode())
    assert "subscribed" in orjson.loads(slow.recv_text())
    sent = 0
    lags: list[float] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < STALL_S:  # the slow one reads nothing meanwhile
            batch = [
                {"id": uuid.uuid4().hex, "source": "svc://api", "type": "log.entry", "subject": f"api-{(sent + i) % SUBJECTS}", "tenant": tenant,
                 "data": {"service": "api", "level": "INFO", "message": PAYLOAD, "attributes": {"n": sent + i}}}
                for i in range(RATE // 10)
            ]  # fmt: skip
            posted = time.monotonic()
            assert (await http.post("/v1/events", json=batch)).status_code == 202
            sent += len(batch)
            # the fast subscriber keeps up the whole time
            await eventually(lambda n=sent: len(fast.pushes()) >= n, timeout=10, interval=0.005)
            lags.append(time.monotonic() - posted)
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - posted)))
        numbers = [p["event"]["data"]["attributes"]["n"] for p in fast.pushes()]
        assert sorted(numbers) == list(range(sent))  # every change, once
        for subject in range(SUBJECTS):  # and in order per subject (subjects spread over partitions)
            mine = [n for n in numbers if n % SUBJECTS == subject]
            assert mine == sorted(mine)
        # now the slow one reads: it is told it fell behind, and gets the latest of every subject
        got, notices, latest = 0, [], {}
        while True:
            try:
                msg = orjson.loads(await asyncio.to_thread(slow.recv_text, 3))
            except TimeoutError:
                break
            if "lagging" in msg:
                notices.append(msg)
            elif "event" in msg:
                got += 1
                latest[msg["subject"]] = msg["event"]["data"]["attributes"]["n"]
        assert notices and notices[0]["coalesced"] > 0, f"received all {got} of {sent}"
        assert got + notices[-1]["coalesced"] == sent  # each change either arrived or was replaced by a newer one
        assert latest == {f"api-{s}": max(n for n in range(sent) if n % SUBJECTS == s) for s in range(SUBJECTS)}
        lags.sort()
        print(f"\nfast subscriber during the stall: {sent} events, post->received p50 {lags[len(lags) // 2] * 1000:.1f} ms, "
              f"max {lags[-1] * 1000:.1f} ms; slow one got {got}, {notices[-1]['coalesced']} coalesced")  # fmt: skip
    finally:
        slow.close()

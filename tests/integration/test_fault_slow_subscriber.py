"""A subscriber that reads nothing for 30 s neither delays the others nor loses anything:
past its queue it is told it fell behind, and when it reads again it gets every change
from the feed, in order, at its own pace."""

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


async def test_slow_subscriber_is_isolated_and_catches_up_losing_nothing(
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
        # now the slow one reads: told it fell behind, then every change from the feed, in order
        slow_numbers, notices = [], []
        while len(slow_numbers) < sent:
            msg = orjson.loads(await asyncio.to_thread(slow.recv_text, 10))
            if "event" in msg:
                slow_numbers.append(msg["event"]["data"]["attributes"]["n"])
            else:
                notices.append(msg)
        assert slow_numbers == numbers, "the same changes as the fast one, in the same (feed) order"
        assert [n for n in notices if n.get("lagging")], notices
        assert not [n for n in notices if "gap" in n], notices
        lags.sort()
        print(f"\nfast subscriber during the stall: {sent} events, post->received p50 {lags[len(lags) // 2] * 1000:.1f} ms, "
              f"max {lags[-1] * 1000:.1f} ms; the slow one got all {len(slow_numbers)} afterwards")  # fmt: skip
    finally:
        slow.close()

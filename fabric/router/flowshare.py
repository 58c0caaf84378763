"""What the live flows of one router share (``fabric.router.flow``): the trail's part of a
tenant's snapshot, queried once per interval whoever watches, and the count of open streams
per tenant (at most ``MAX_STREAMS``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

INTERVAL_S = 2.0
MAX_STREAMS = 8


class FlowShare:
    """The trail's part of the snapshots, one query round per tenant per interval, and the
    count of open streams per tenant."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[float, asyncio.Future[dict[str, Any]]]] = {}
        self.open: dict[str, int] = {}

    def of(self, tenant: str, query: Callable[[], Awaitable[dict[str, Any]]]) -> asyncio.Future[dict[str, Any]]:
        """The tenant's trail part: the one asked for less than an interval ago, else ``query()``."""
        now = time.monotonic()
        got = self._latest.get(tenant)
        if got is None or now - got[0] >= INTERVAL_S * 0.9:
            got = (now, asyncio.ensure_future(query()))
            self._latest[tenant] = got
        return got[1]

    def full(self, tenant: str) -> bool:
        return self.open.get(tenant, 0) >= MAX_STREAMS

    def opened(self, tenant: str) -> bool:
        """Count a stream that starts now (False, and not counted, when the tenant has its fill)."""
        if self.full(tenant):
            return False
        self.open[tenant] = self.open.get(tenant, 0) + 1
        return True

    def closed(self, tenant: str) -> None:
        self.open[tenant] -= 1
        if not self.open[tenant]:
            del self.open[tenant]
            self._latest.pop(tenant, None)

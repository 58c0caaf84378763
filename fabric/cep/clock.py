"""Time for the matcher: event time from the envelope, processing time from a clock."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from fabric.events.times import ms_of


class Clock(Protocol):
    def now_ms(self) -> int: ...


class SystemClock:
    def now_ms(self) -> int:
        return int(time.time() * 1000)


def event_time_ms(event: Mapping[str, Any]) -> int:
    """The event's ``time`` in epoch milliseconds (a datetime, RFC 3339 text or a number of ms)."""
    t = event.get("time")
    if isinstance(t, (datetime, str)):
        return ms_of(t)
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return int(t)
    raise ValueError(f"event {event.get('id')!r} has no usable time: {t!r}")

"""A pattern's event-time watermark over the partitions it hears from.

The watermark is the smallest, over the partitions seen, of the newest event time,
minus the pattern's allowed lateness. A partition that sent nothing for ``IDLE_MS``
(processing time) stops holding it back: on its next event, or when ``quiet`` is asked
(the stage asks every second, so a burst followed by silence is not held back forever).
"""

from __future__ import annotations

from typing import Any

#: A partition that sent nothing for this long (processing time) stops holding the watermark back.
IDLE_MS = 10_000
NEVER = -(2**62)


class PartitionWatermark:
    __slots__ = ("_base", "_base_at", "lateness_ms", "seen", "value")

    def __init__(self, lateness_ms: int) -> None:
        self.lateness_ms = lateness_ms
        self.seen: dict[Any, tuple[int, int]] = {}  # partition -> (newest event time, when heard, clock ms)
        self._base = NEVER  # the smallest newest-time over active partitions
        self._base_at = NEVER
        self.value = NEVER

    def heard(self, part: Any, time_ms: int, now_ms: int) -> int | None:
        """A partition has reached ``time_ms``: the new watermark if that moves it, else None
        (the caller moves ``value`` when it has applied what the new watermark releases)."""
        newest = self.seen.get(part)
        if newest is not None and time_ms <= newest[0]:
            self.seen[part] = (newest[0], now_ms)
            return None
        self.seen[part] = (time_ms, now_ms)
        # The slowest partition holds the watermark back, unless it has gone quiet. The
        # minimum only moves when the slowest one advances, or (checked each second) when
        # one goes quiet; otherwise it is kept.
        if newest is None or newest[0] <= self._base or now_ms - self._base_at >= 1000:
            active = [t for t, heard in self.seen.values() if now_ms - heard <= IDLE_MS]
            self._base, self._base_at = min(active or [time_ms]), now_ms
        wm = self._base - self.lateness_ms
        return wm if wm > self.value else None

    def quiet(self, now_ms: int) -> int | None:
        """Processing time has passed without records: the new watermark if a partition
        holding it back has gone quiet since (None if nothing moves)."""
        active = [t for t, heard in self.seen.values() if now_ms - heard <= IDLE_MS]
        if not active:  # every partition is quiet: the newest one seen stands
            active = [max(t for t, _ in self.seen.values())] if self.seen else []
        if not active or min(active) <= self._base:
            return None
        self._base, self._base_at = min(active), now_ms
        wm = self._base - self.lateness_ms
        return wm if wm > self.value else None

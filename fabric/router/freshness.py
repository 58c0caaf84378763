"""How old a context is, and whether that makes it stale."""

from __future__ import annotations

import time

from fabric.events.catalogue import ContextType
from fabric.events.times import iso_ms


def freshness(at_ms: int, ct: ContextType, now_ms: int | None = None) -> tuple[str, int, bool]:
    """(as_of, age_ms, stale) of a context whose event time is ``at_ms``: stale once older
    than the context type's ``ttl_s``."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    age = max(0, now_ms - at_ms)
    return iso_ms(at_ms), age, bool(ct.ttl_s) and age > ct.ttl_s * 1000

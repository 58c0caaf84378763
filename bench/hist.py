"""Latency histograms (HDR, microseconds) and their summary."""

from __future__ import annotations

from typing import Any

from hdrh.histogram import HdrHistogram

MAX_US = 120_000_000  # two minutes


def histogram() -> HdrHistogram:
    return HdrHistogram(1, MAX_US, 3)


def record(h: HdrHistogram, seconds: float) -> None:
    h.record_value(min(MAX_US, max(1, int(seconds * 1_000_000))))


def summary(h: HdrHistogram) -> dict[str, Any]:
    """p50/p90/p99/p999/max in milliseconds, and the count."""
    if h.get_total_count() == 0:
        return {"count": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
    ms = lambda p: round(h.get_value_at_percentile(p) / 1000, 3)  # noqa: E731
    return {
        "count": h.get_total_count(),
        "p50_ms": ms(50),
        "p90_ms": ms(90),
        "p99_ms": ms(99),
        "p999_ms": ms(99.9),
        "max_ms": round(h.get_max_value() / 1000, 3),
    }

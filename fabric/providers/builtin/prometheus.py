"""A Prometheus exposition endpoint into Metric: scrape it every few seconds.

Each sample becomes a ``metric.sample`` event, subject ``<service>:<name>`` plus its
labels (``orders-api:http_requests_total{method="GET"}``), so every series has its own
window in the cache. Counters keep their ``_total`` name; histogram and summary
series (``_bucket``, ``_sum``, ``_count``, quantiles) are samples like any other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from fabric.events.envelope import Envelope
from fabric.providers.sdk import Provider

log = logging.getLogger(__name__)


def samples(text: str) -> list[tuple[str, dict[str, str], float, str | None]]:
    """(name, labels, value, unit) of every sample of an exposition."""
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.append((s.name, dict(s.labels), float(s.value), family.unit or None))
    return out


def series_subject(service: str, name: str, labels: dict[str, str]) -> str:
    if not labels:
        return f"{service}:{name}"
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{service}:{name}{{{inner}}}"


def metric_events(provider: Provider, text: str, service: str, scraped_ms: int) -> list[Envelope]:
    events = []
    for name, labels, value, unit in samples(text):
        if value != value or value in (float("inf"), float("-inf")):  # NaN / +Inf buckets are not values
            continue
        subject = series_subject(service, name, labels)
        data: dict[str, Any] = {"name": name, "value": value, "unit": unit, "service": service, "labels": labels}
        events.append(provider.event("metric.sample", subject, data, id=f"{subject}@{scraped_ms}",
                                     sequence=scraped_ms))  # fmt: skip
    return events


async def scrape_once(provider: Provider, http: httpx.AsyncClient, url: str, service: str) -> int:
    r = await http.get(url)
    r.raise_for_status()
    events = metric_events(provider, r.text, service, int(time.time() * 1000))
    report = await provider.publish_many(events)
    return len(report.sent)


async def scrape(provider: Provider, url: str, service: str, every_s: float = 15.0, rounds: int | None = None) -> None:
    """Scrape ``url`` every ``every_s`` (``rounds`` times, or until cancelled); a failed scrape is logged."""
    async with httpx.AsyncClient(timeout=max(1.0, every_s)) as http:
        done = 0
        while rounds is None or done < rounds:
            started = time.monotonic()
            try:
                n = await scrape_once(provider, http, url, service)
                log.info("scraped %s: %d samples", url, n)
            except (httpx.HTTPError, ValueError) as e:
                log.warning("cannot scrape %s: %s", url, e)
            done += 1
            await asyncio.sleep(max(0.0, every_s - (time.monotonic() - started)))

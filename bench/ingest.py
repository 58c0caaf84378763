"""Ingest: POST /v1/events with batches of 100 events at fixed request rates (open loop):
events/s accepted and request latency, beside the same batches produced straight to
Kafka by the provider SDK's producer in the same run."""

from __future__ import annotations

import time
from typing import Any

import orjson

from bench.env import RESULTS, BenchEnv, event, save
from bench.loadgen import drive, http_post
from bench.plot import latency_vs_rate
from fabric.events.codecs import decode_structured
from fabric.events.envelope import Envelope
from fabric.providers.sdk import Provider
from fabric.testing import bearer

BATCH = 100


async def run(quick: bool = False) -> dict[str, Any]:
    rates = [20, 100] if quick else [10, 50, 100, 150, 200, 300]  # requests/s, 100 events each
    seconds = 3.0 if quick else 8.0
    with BenchEnv("ingest") as env:
        env.procs.start("worker")  # the whole pipeline runs, as it would
        env.procs.start("router")
        env.procs.wait_ready()
        s = env.settings
        bodies = []
        for b in range(50):
            batch = [orjson.loads(event(b * BATCH + i, 10_000)[1]) for i in range(BATCH)]
            bodies.append(http_post("127.0.0.1", s.router.port, "/v1/events",
                                    {**bearer(s, "bench"), "Content-Type": "application/json"}, orjson.dumps(batch)))  # fmt: skip
        runs = []
        for rate in rates:
            res = await drive("127.0.0.1", s.router.port, bodies, rate, seconds, connections=8)
            res["events_per_s"] = round(res["achieved_rate"] * BATCH, 1)
            runs.append(res)
            print(f"  ingest {rate:>4} req/s x {BATCH}: {res['events_per_s']:>9} events/s  p50 {res['p50_ms']} "
                  f"p99 {res['p99_ms']} max {res['max_ms']} ms  errors {res['errors']}", flush=True)  # fmt: skip
        # the same events through the SDK (validated locally, produced to Kafka), as fast as it goes
        events: list[Envelope] = [decode_structured(event(i, 10_000)[1]) for i in range(20_000)]
        async with Provider(s, source="bench://sdk", tenant="bench") as p:
            t = time.perf_counter()
            for i in range(0, len(events), BATCH):
                await p.publish_many(events[i : i + BATCH])
            sdk_rate = round(len(events) / (time.perf_counter() - t), 1)
        print(f"  ingest provider SDK publish_many x {BATCH}: {sdk_rate} events/s", flush=True)
    best = max((r["events_per_s"] for r in runs if r["errors"] == 0 and (r["p99_ms"] or 1e9) <= 100), default=0)
    summary = {"http_events_per_s_at_p99_le_100ms": best, "sdk_events_per_s": sdk_rate,
               "p99_ms_by_rate": {r["offered_rate"]: r["p99_ms"] for r in runs}}  # fmt: skip
    save("ingest", {"batch": BATCH, "summary": summary, "runs": runs})
    latency_vs_rate({"POST /v1/events (100 per request)": runs}, "Ingest: requests/s of 100-event batches",
                    RESULTS / "ingest.png")  # fmt: skip
    return {"summary": summary}

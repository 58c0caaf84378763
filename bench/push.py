"""Push latency: an event produced to Kafka -> received by 1, 10 and 100 WebSocket
subscribers, at 1,000 and 5,000 events/s (open loop), through the whole pipeline."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bench.env import RESULTS, BenchEnv, save
from bench.plot import percentile_bars
from fabric import kafka


def metric_event(i: int, sent_ns: int) -> tuple[bytes, bytes]:
    subject = f"svc-{i % 1000}:latency"
    body = {"id": f"push-{i}", "source": "bench://push", "type": "metric.sample", "subject": subject,
            "tenant": "bench", "data": {"name": "latency_p95", "value": float(i % 400), "unit": "ms",
                                        "labels": {"sent_ns": str(sent_ns)}}}  # fmt: skip
    return f"bench/{subject}".encode(), orjson.dumps(body)


async def produce_at(env: BenchEnv, rate: float, seconds: float, offset: int) -> int:
    """Open loop: event i is stamped and sent at t0 + i/rate; returns how many were sent."""
    p = kafka.producer(env.settings, linger_ms=1)
    await kafka.start(env.settings, p)
    topic = env.settings.topic("ingest")
    t0 = time.perf_counter()
    wall0 = time.time_ns()
    sent = 0
    try:
        total = int(rate * seconds)
        while sent < total:
            due = min(total, int((time.perf_counter() - t0) * rate) + 1)
            while sent < due:
                sched_ns = wall0 + int(sent / rate * 1e9)
                key, value = metric_event(offset + sent, sched_ns)
                await p.send(topic, value, key=key)
                sent += 1
            await asyncio.sleep(0.001)
        await p.flush()
    finally:
        await p.stop()
    return sent


async def one(env: BenchEnv, subs: int, rate: int, seconds: float, offset: int) -> dict[str, Any]:
    out = env.settings.data_dir / f"subs-{subs}-{rate}.json"
    listen = seconds + 6
    proc = env.spawn(
        [sys.executable, "-m", "bench.subscribers", env.procs.url.replace("http", "ws", 1) + "/v1/subscribe",
         "bench", str(subs), str(listen), str(out)], f"subs-{subs}-{rate}",
    )  # fmt: skip
    ready = Path(str(out) + ".ready")
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"subscribers did not start: {env.procs.log(f'subs-{subs}-{rate}')[-2000:]}")
        await asyncio.sleep(0.1)
    sent = await produce_at(env, rate, seconds, offset)
    while proc.poll() is None:
        await asyncio.sleep(0.2)
    res: dict[str, Any] = json.loads(out.read_text())
    res.pop("hist", None)
    res.update(subscribers=subs, rate=rate, sent=sent, expected=sent * subs,
               delivered_fraction=round(res["received"] / (sent * subs), 4) if sent else None)  # fmt: skip
    return res


async def run(quick: bool = False) -> dict[str, Any]:
    seconds = 3.0 if quick else 8.0
    rows = []
    with BenchEnv("push") as env:
        env.procs.start("worker")
        env.procs.start("router")
        env.procs.wait_ready()
        offset = 0
        for rate in (1000, 5000):
            for subs in (1, 10, 100):
                res = await one(env, subs, rate, seconds, offset)
                offset += int(rate * seconds)
                rows.append(res)
                print(f"  push {subs:>3} subscribers {rate:>5} events/s: p50 {res['p50_ms']} p99 {res['p99_ms']} "
                      f"p999 {res['p999_ms']} max {res['max_ms']} ms, delivered {res['received']}/{res['expected']}, "
                      f"lagging notices {res['lagging_notices']}", flush=True)  # fmt: skip
    for r in rows:
        r["config"] = f"{r['subscribers']} subs @ {r['rate']}/s"
    summary = {r["config"]: {"p99_ms": r["p99_ms"], "delivered": r["delivered_fraction"]} for r in rows}
    save("push", {"seconds_per_run": seconds, "summary": summary, "targets": {"p99_ms_at_5000": 50}, "runs": rows})
    percentile_bars(rows, "config", "Event produced to Kafka -> pushed over WebSocket", RESULTS / "push.png", 50)
    return {"summary": summary}

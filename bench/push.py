"""Push latency and fan-out: an event produced to Kafka -> received by 1, 10 and 100 WebSocket
subscribers, at 1,000 and 5,000 events/s (open loop), through the whole pipeline (CEP on).

Subscribers run in up to four processes and ask for several changes per frame
(``"batch": true``); reported: latency, changes delivered (and per second), frames, the
router's CPU and the clients'. ``BENCH_BROKER`` picks the broker (kafka by default)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from hdrh.histogram import HdrHistogram

from bench.env import RESULTS, BenchEnv, save
from bench.hist import histogram, summary
from bench.idle import cpu_s
from bench.plot import percentile_bars
from fabric import kafka

CLIENTS = 4  # subscriber processes at most (one Python process cannot receive 100 busy subscriptions)


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
    """``subs`` subscribers spread over up to CLIENTS processes, receiving while ``rate`` events/s flow."""
    listen = seconds + 6
    clients = min(CLIENTS, subs)
    per = [subs // clients + (1 if k < subs % clients else 0) for k in range(clients)]
    outs = [env.settings.data_dir / f"subs-{subs}-{rate}-{k}.json" for k in range(clients)]
    url = env.procs.url.replace("http", "ws", 1) + "/v1/subscribe"
    argv = [sys.executable, "-m", "bench.subscribers", url, "bench"]
    procs = [
        env.spawn([*argv, str(n), str(listen), str(out)], f"subs-{subs}-{rate}")
        for n, out in zip(per, outs, strict=True)
    ]
    deadline = time.monotonic() + 60
    while not all(Path(str(out) + ".ready").exists() for out in outs):
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            raise RuntimeError(f"subscribers did not start: {env.procs.log(f'subs-{subs}-{rate}')[-2000:]}")
        await asyncio.sleep(0.1)
    router = env.procs.procs["router"].pid
    router_cpu = cpu_s(router)
    # the rest of the box, to tell a slow router from a saturated machine
    others = {p.name: p.pid() for p in env.stack.parts()} | {"worker": env.procs.procs["worker"].pid}
    others_cpu = {n: cpu_s(pid) for n, pid in others.items() if pid}
    sent = await produce_at(env, rate, seconds, offset)
    router_cpu = cpu_s(router) - router_cpu
    others_cores = {n: round((cpu_s(others[n]) - v) / seconds, 3) for n, v in others_cpu.items()}  # type: ignore[arg-type]
    while any(p.poll() is None for p in procs):
        await asyncio.sleep(0.2)
    parts = [json.loads(out.read_text()) for out in outs]
    h = histogram()
    for part in parts:
        if part["hist"]:
            h.add(HdrHistogram.decode(base64.b64decode(part["hist"])))
    received, frames = sum(p["received"] for p in parts), sum(p["frames"] for p in parts)
    res: dict[str, Any] = {
        **summary(h), "subscribers": subs, "rate": rate, "sent": sent, "expected": sent * subs, "received": received,
        "delivered_fraction": round(received / (sent * subs), 4) if sent else None,
        "frames": frames, "changes_per_frame": round(received / frames, 2) if frames else None,
        "lagging_notices": sum(p["lagging_notices"] for p in parts),
        "changes_per_s": round(received / seconds), "frames_per_s": round(frames / seconds),
        "router_cores": round(router_cpu / seconds, 3), "client_processes": clients, "other_cores": others_cores,
        "client_cores": round(sum(p["cpu_s"] for p in parts) / listen, 3),
    }  # fmt: skip
    return res


async def run(quick: bool = False) -> dict[str, Any]:
    seconds = 3.0 if quick else 8.0
    rows = []
    broker = os.environ.get("BENCH_BROKER", "kafka")
    with BenchEnv(f"push-{broker}", broker=broker) as env:
        env.procs.start("worker")
        env.procs.start("router")
        env.procs.wait_ready()
        from bench.push_path import warm_up

        await warm_up(env, 2000, 4.0 if quick else 15.0)
        offset = 0
        for rate in (1000, 5000):
            for subs in (1, 10, 100):
                res = await one(env, subs, rate, seconds, offset)
                offset += int(rate * seconds)
                rows.append(res)
                print(f"  push {subs:>3} subscribers {rate:>5} events/s: p50 {res['p50_ms']} p99 {res['p99_ms']} "
                      f"p999 {res['p999_ms']} max {res['max_ms']} ms, delivered {res['received']}/{res['expected']} "
                      f"({res['changes_per_s']}/s in {res['frames_per_s']} frames/s), lagging notices "
                      f"{res['lagging_notices']}; router {res['router_cores']} cores, {res['client_processes']} client "
                      f"processes {res['client_cores']} cores; {res['other_cores']}", flush=True)  # fmt: skip
    for r in rows:
        r["config"] = f"{r['subscribers']} subs @ {r['rate']}/s"
    summary = {r["config"]: {"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "delivered": r["delivered_fraction"],
                             "changes_per_s": r["changes_per_s"], "frames_per_s": r["frames_per_s"]} for r in rows}  # fmt: skip
    save(f"push-{broker}", {"broker": broker, "seconds_per_run": seconds, "summary": summary,
                            "targets": {"p99_ms_100_subs_at_1000": 100, "changes_per_s": 100_000}, "runs": rows})  # fmt: skip
    percentile_bars(rows, "config", f"Event produced -> pushed over WebSocket ({broker}, CEP on)",
                    RESULTS / f"push-{broker}.png", 100)  # fmt: skip
    return {"summary": summary}

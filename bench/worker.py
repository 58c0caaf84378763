"""Worker throughput: events/s through decode -> validate -> enrich -> route -> materialize for
one and two ``fabric worker`` processes, beside a bare Faust agent (forwarding and
consume-only) and a plain aiokafka getmany -> send loop over the same events, in one run."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.env import RESULTS, BenchEnv, free_port, produce, save
from bench.plot import throughput_over_time
from fabric.kafka.topics import ensure_topics

SUBJECTS = 10_000


def metric(text: str, stage: str, outcome: str | None = None) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("fabric_worker_events_total{") and f'stage="{stage}"' in line:
            if outcome is None or f'outcome="{outcome}"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def cep_done(texts: list[str]) -> float:
    """Events through CEP: what keying read, scaled by how much of keying's output the
    matchers have read (keyed copies and ticks)."""
    seen = sum(metric(t, "cep-keys", "seen") for t in texts)
    out = sum(metric(t, "cep-keys", "keyed") + metric(t, "cep-keys", "ticks") for t in texts)
    matched = sum(metric(t, "cep", "seen") for t in texts)
    return seen * min(1.0, matched / out) if out else 0.0


async def follow(progress: Callable[[], Any], n: int, limit_s: float) -> dict[str, Any]:
    """Sample progress every 0.25 s until n done or limit_s after the first progress."""
    points: list[tuple[float, float]] = []
    first: float | None = None
    start_wait = time.monotonic()
    done = 0.0
    prev_t, prev_done = None, 0.0
    while True:
        await asyncio.sleep(0.25)
        now = time.monotonic()
        done = float(await progress())
        if first is None:
            if done > 0:
                first, prev_t, prev_done = now, now, done
            elif now - start_wait > 120:
                raise RuntimeError("no progress within 120 s")
            continue
        assert prev_t is not None
        points.append((round(now - first, 2), round((done - prev_done) / (now - prev_t), 1)))
        prev_t, prev_done = now, done
        if done >= n or now - first > limit_s:
            break
    elapsed = (prev_t or 0) - (first or 0)
    return {"events": int(done), "seconds": round(elapsed, 2),
            "events_per_s": round(done / elapsed, 1) if elapsed else None, "timeline": points}  # fmt: skip


async def fabric_workers(
    processes: int, n: int, limit_s: float, stages: str = "route,materialize", broker: str = "tansu"
) -> dict[str, Any]:
    """Progress is what every stage this run has completed (the slowest stage)."""
    with BenchEnv(f"worker-{processes}-{stages.replace(',', '-')}-{broker}", broker=broker) as env:
        s = env.settings
        await produce(s, n, SUBJECTS)
        ports = [s.worker.metrics_port] + [free_port() for _ in range(processes - 1)]
        for i, port in enumerate(ports):
            env.spawn(
                [sys.executable, "-m", "fabric", "worker", "--stages", stages],
                f"worker{i}",
                {"FABRIC_WORKER__METRICS_PORT": str(port)},
            )
        async with httpx.AsyncClient() as c:

            async def progress() -> float:
                texts = []
                for port in ports:
                    try:
                        texts.append((await c.get(f"http://127.0.0.1:{port}/metrics", timeout=2)).text)
                    except httpx.HTTPError:
                        continue
                materialized = sum(metric(t, "materialize") for t in texts)
                return min(materialized, cep_done(texts)) if "cep" in stages else materialized

            return await follow(progress, n, limit_s)


async def baseline(kind: str, n: int, limit_s: float, broker: str = "tansu") -> dict[str, Any]:
    with BenchEnv(f"baseline-{kind}-{broker}", broker=broker) as env:
        s = env.settings
        await ensure_topics(s, [s.topic("ingest"), s.topic("out")])
        await produce(s, n, SUBJECTS)
        progress_file = s.data_dir / "progress"
        args = [s.kafka.bootstrap, s.topic("ingest"), s.topic("out"), str(progress_file)]
        if kind == "aiokafka":
            env.spawn([sys.executable, "-m", "bench.baselines.aiokafka_loop", *args], kind)
        else:
            env.spawn([sys.executable, "-m", "bench.baselines.faust_agent", *args, kind.split("-")[1]], kind)

        async def progress() -> float:
            try:
                return float(Path(progress_file).read_text() or 0)
            except (FileNotFoundError, ValueError):
                return 0.0

        return await follow(progress, n, limit_s)


async def run(quick: bool = False) -> dict[str, Any]:
    broker = os.environ.get("BENCH_BROKER", "kafka")
    n = 50_000 if quick else 200_000
    limit = 15.0 if quick else 40.0
    systems: dict[str, Any] = {}
    plan = [
        ("fabric worker, 1 process", lambda: fabric_workers(1, n, limit, broker=broker)),
        (
            "fabric worker, 1 process, with CEP (5 library patterns)",
            lambda: fabric_workers(1, n, limit, "route,materialize,cep", broker=broker),
        ),
        ("fabric worker, 2 processes", lambda: fabric_workers(2, n, limit, broker=broker)),
        ("plain aiokafka getmany->send", lambda: baseline("aiokafka", n, limit, broker=broker)),
    ]
    if not quick:
        plan += [
            ("bare Faust agent, consume only", lambda: baseline("faust-consume", n, limit, broker=broker)),
            ("bare Faust agent, forward (topic.send)", lambda: baseline("faust-forward", n, limit, broker=broker)),
        ]
    for name, job in plan:
        res = await job()
        systems[name] = res
        print(
            f"  worker {name:<40} {res['events_per_s']:>10} events/s ({res['events']} in {res['seconds']} s)",
            flush=True,
        )
    summary = {name: r["events_per_s"] for name, r in systems.items()}
    save(f"worker-{broker}", {"broker": broker, "events": n, "subjects": SUBJECTS, "summary": summary,
                              "targets": {"fabric worker, 1 process": 40000,
                                          "fabric worker, 1 process, with CEP (5 library patterns)": 25000},
                              "systems": systems})  # fmt: skip
    throughput_over_time({k: v["timeline"] for k, v in systems.items()},
                         f"Worker throughput over time ({n} events of 0.5-1.5 KB, {broker})",
                         RESULTS / f"worker-{broker}.png", "events/s")  # fmt: skip
    return {"summary": summary}


async def run_cep_scale(quick: bool = False) -> dict[str, Any]:
    """Events/s through route, materialize and CEP (keying and matching) with 1, 2 and 3
    worker processes on Apache Kafka, beside the plain aiokafka loop in the same run."""
    n = 30_000 if quick else 100_000
    limit = 20.0 if quick else 60.0
    systems: dict[str, Any] = {}
    for p in (1, 2, 3):
        systems[f"{p} worker process{'es' if p > 1 else ''}, with CEP"] = await fabric_workers(
            p, n, limit, "route,materialize,cep", broker="kafka"
        )
    systems["plain aiokafka getmany->send"] = await baseline("aiokafka", n, limit, broker="kafka")
    for name, res in systems.items():
        print(f"  cep-scale {name:<36} {res['events_per_s']:>10} events/s ({res['events']} in {res['seconds']} s)")
    summary = {name: r["events_per_s"] for name, r in systems.items()}
    save("cep_scale", {"events": n, "subjects": SUBJECTS, "summary": summary, "systems": systems})
    return {"summary": summary}

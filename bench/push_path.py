"""Where a push's time goes: one event stream (1,000, then 5,000 events/s, open loop) through a
running fabric (CEP on), timed at every place it can be seen, in one run, beside the floor.

- **floor**: two plain hops on the same broker with the same client (produce -> consume ->
  produce -> consume), what any two-stage pipeline pays at least;
- **typed (uncommitted)**: the route stage's output on the typed topic, as soon as the
  broker has it (``read_uncommitted``);
- **typed (committed)**: the same once its transaction committed (``read_committed``:
  what the materializer, CEP and the sink read);
- **feed**: the change in the tenant's Redis feed (after the materializer's script);
- **frame**: the WebSocket frame one subscriber receives.

``python -m bench push_path [--quick]``; ``BENCH_BROKER=tansu`` for Tansu; to see what a part
costs: ``BENCH_COMMIT_MS=N`` (another transaction interval), ``BENCH_TRANSACTIONAL=0`` (no
transactions), ``BENCH_STAGES=route,materialize`` (no CEP), ``BENCH_FETCH_WAIT_MS=N``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
import websockets

from bench.brokers import floor
from bench.env import BenchEnv, save
from bench.hist import histogram, record, summary
from bench.idle import cpu_s
from bench.push import metric_event
from fabric import kafka
from fabric.cache.keys import CacheKeys
from fabric.events.headers import CACHE_JSON
from fabric.kafka.topics import partitions_of
from fabric.testing import bearer

#: events sent before this (warm-up, an earlier rate still in flight) are not counted
_measuring = {"since_ns": 0}


def _sent_ns(event: dict[str, Any]) -> int | None:
    sent = int(event["data"]["labels"]["sent_ns"])
    return sent if sent >= _measuring["since_ns"] else None


async def _typed(env: BenchEnv, isolation: str, h: Any, total: int, done: asyncio.Event) -> None:
    s = env.settings
    c = kafka.consumer(s, isolation_level=isolation)
    await kafka.start(s, c)
    topic = s.topic("metric")
    c.assign(await partitions_of(c, topic))
    await c.seek_to_end(*c.assignment())
    got = 0
    try:
        while got < total and not done.is_set():
            batch = await c.getmany(timeout_ms=200)
            now = time.time_ns()
            for recs in batch.values():
                for r in recs:
                    body = dict(r.headers).get(CACHE_JSON)
                    if body and (sent := _sent_ns(orjson.loads(body))) is not None:
                        record(h, (now - sent) / 1e9)
                        got += 1
    finally:
        await c.stop()


async def _feed(env: BenchEnv, h: Any, total: int, done: asyncio.Event) -> None:
    r = aioredis.from_url(env.settings.redis.url)
    stream = CacheKeys(env.settings.redis.key_prefix).changes("bench")
    last = "$"
    got = 0
    try:
        while got < total and not done.is_set():
            res: Any = await r.xread({stream: last}, count=1000, block=200)
            now = time.time_ns()
            for _, entries in res or []:
                for entry_id, f in entries:
                    last = entry_id
                    if (sent := _sent_ns(orjson.loads(f[b"v"]))) is not None:
                        record(h, (now - sent) / 1e9)
                        got += 1
    finally:
        await r.aclose()


async def _frames(env: BenchEnv, h: Any, total: int, done: asyncio.Event, ready: asyncio.Event) -> None:
    url = env.procs.url.replace("http", "ws", 1) + "/v1/subscribe"
    headers = bearer(env.settings, "bench")
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        await ws.send(orjson.dumps({"subscribe": ["metric.*"], "batch": True}).decode())
        await ws.recv()
        ready.set()
        got = 0
        while got < total and not done.is_set():
            try:
                frame = orjson.loads(await asyncio.wait_for(ws.recv(), 1.0))
            except TimeoutError:
                continue
            now = time.time_ns()
            for msg in frame if isinstance(frame, list) else (frame,):
                if "event" in msg and (sent := _sent_ns(msg["event"])) is not None:
                    record(h, (now - sent) / 1e9)
                    got += 1


async def _batch_times(env: BenchEnv) -> dict[str, tuple[int, float]]:
    """Per worker stage, from its Prometheus metrics: batches handled and the mean time of one."""
    async with httpx.AsyncClient() as c:
        text = (await c.get(f"http://127.0.0.1:{env.settings.worker.metrics_port}/metrics")).text
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("fabric_worker_batch_seconds_sum{"):
            sums[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("fabric_worker_batch_seconds_count{"):
            counts[line.split('"')[1]] = int(float(line.rsplit(" ", 1)[1]))
    return {k: (counts[k], 1000 * sums[k] / counts[k]) for k in counts if counts[k]}


async def warm_up(env: BenchEnv, rate: int, seconds: float) -> None:
    """Events nobody times, until the broker's JIT has compiled its hot paths: a JVM broker
    fresh from start burns a core for its first minute (measured: 1.1 cores at 1,000 events/s
    early, 0.4 at 5,000/s a minute later), which would be charged to the fabric."""
    p = kafka.producer(env.settings, linger_ms=5)
    await kafka.start(env.settings, p)
    topic = env.settings.topic("ingest")
    t0 = time.perf_counter()
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        key, value = metric_event(900_000_000 + i, time.time_ns())
        await p.send(topic, value, key=key)
    await p.flush()
    await p.stop()
    await asyncio.sleep(2)


async def one_rate(env: BenchEnv, rate: int, seconds: float) -> dict[str, Any]:
    total = int(rate * seconds)
    before = await _batch_times(env)
    floor_summary = await floor(env, rate, seconds, hops=2)
    hs = {name: histogram() for name in ("typed_uncommitted", "typed_committed", "feed", "frame")}
    _measuring["since_ns"] = time.time_ns()
    done, ready = asyncio.Event(), asyncio.Event()
    watchers = [
        asyncio.create_task(_typed(env, "read_uncommitted", hs["typed_uncommitted"], total, done)),
        asyncio.create_task(_typed(env, "read_committed", hs["typed_committed"], total, done)),
        asyncio.create_task(_feed(env, hs["feed"], total, done)),
        asyncio.create_task(_frames(env, hs["frame"], total, done, ready)),
    ]
    await asyncio.wait_for(ready.wait(), 30)
    await asyncio.sleep(1.0)  # the consumers are positioned
    p = kafka.producer(env.settings, linger_ms=1)
    await kafka.start(env.settings, p)
    pids = {part.name: part.pid() for part in env.stack.parts()} | {n: pr.pid for n, pr in env.procs.procs.items()}
    cpu0 = {n: cpu_s(pid) for n, pid in pids.items() if pid}
    t0 = time.perf_counter()
    wall0 = time.time_ns()
    topic = env.settings.topic("ingest")
    for i in range(total):
        await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        key, value = metric_event(rate * 1_000_000 + i, wall0 + int(i / rate * 1e9))
        await p.send(topic, value, key=key)
    await p.flush()
    cores = {n: round((cpu_s(pids[n]) - v) / (time.perf_counter() - t0), 3) for n, v in cpu0.items()}  # type: ignore[arg-type]
    await p.stop()
    await asyncio.wait(watchers, timeout=15)
    done.set()
    await asyncio.gather(*watchers, return_exceptions=True)
    after = await _batch_times(env)
    stages = {k: (n - before.get(k, (0, 0.0))[0], mean) for k, (n, mean) in after.items()}
    rows = {"floor_two_hops": floor_summary, **{k: summary(h) for k, h in hs.items()}}
    print(f"  -- {rate} events/s; cores used while sending: {cores}", flush=True)
    for name, (n, mean_ms) in stages.items():
        print(f"  worker stage {name:<12} {n:>6} batches, {mean_ms:6.2f} ms per batch (handle + produce)", flush=True)
    for name, row in rows.items():
        print(f"  {name:<18} p50 {row['p50_ms']:>7} p99 {row['p99_ms']:>7} p999 {row['p999_ms']:>7} ms "
              f"(n={row['count']})", flush=True)  # fmt: skip
    return {
        "stages": rows,
        "cores": cores,
        "worker_batches": {k: {"batches": n, "mean_ms": m} for k, (n, m) in stages.items()},
    }


async def run(quick: bool = False) -> dict[str, Any]:
    broker = os.environ.get("BENCH_BROKER", "kafka")
    seconds = 3.0 if quick else 8.0
    fetch_wait = int(os.environ.get("BENCH_FETCH_WAIT_MS", "0"))  # 0: the broker's default
    with BenchEnv(f"push_path-{broker}", broker=broker, fetch_max_wait_ms=fetch_wait) as env:
        if os.environ.get("BENCH_TRANSACTIONAL") == "0":  # to see what transactions cost the path
            k = env.settings.kafka.model_copy(update={"transactional": False})
            env.settings = env.procs.settings = env.settings.model_copy(update={"kafka": k})
        if os.environ.get("BENCH_COMMIT_MS"):  # to see what the transactions' interval costs
            worker = env.settings.worker.model_copy(update={"commit_interval_ms": int(os.environ["BENCH_COMMIT_MS"])})
            env.settings = env.procs.settings = env.settings.model_copy(update={"worker": worker})
        stages = os.environ.get("BENCH_STAGES")  # e.g. route,materialize: what CEP costs the path
        env.procs.start("worker", *(["--stages", stages] if stages else []))  # default: route, materialize, CEP
        env.procs.start("router")
        env.procs.wait_ready()
        await warm_up(env, 2000, 4.0 if quick else 15.0)
        rates = {str(rate): await one_rate(env, rate, seconds) for rate in (1000, 5000)}
    save(f"push_path-{broker}", {"broker": broker, "seconds": seconds, "rates": rates,
                                 "targets": {"frame_p50_ms": 10, "frame_p99_ms": 50}})  # fmt: skip
    return {
        "summary": {rate: {k: (v["p50_ms"], v["p99_ms"]) for k, v in r["stages"].items()} for rate, r in rates.items()}
    }

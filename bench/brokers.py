"""Apache Kafka beside Tansu, in one run: what each broker costs and how fast the fabric is
on it. Per broker, on a fresh stack:

- **start**: seconds until the broker answers (Kafka's jars already resolved), and its memory;
- **floor**: produce -> consume latency of the broker alone, one producer and one
  consumer built by ``fabric.kafka`` (the fabric's own settings: acks=all, the
  broker's fetch wait), 1,000 records/s, open loop;
- **push**: an event produced to ``ctx.ingest`` -> the WebSocket frame a subscriber
  receives, through route, materialize and the router, 1 subscriber at 1,000 events/s,
  with its ratio to the floor (the floor is one hop; the path has three);
- **worker**: events/s through route -> materialize, one worker process (on Kafka, in
  transactions);
- **idle**: CPU of the whole fabric (broker, Redis, worker with CEP, sink, router) over
  60 s with nothing flowing (15 s with ``--quick``);
- **takeover**: with the default session timeout (6 s), a worker killed with SIGKILL
  while events flow: seconds until the cache changes again, (a) when it is restarted
  at once, (b) when a second worker that was running all along takes its partitions.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import idle, push, worker
from bench.env import BenchEnv, event, rss_mb, save
from bench.hist import histogram, record, summary
from fabric import kafka
from fabric.cache.keys import CacheKeys
from fabric.kafka.topics import ensure_topics, partitions_of


async def floor(env: BenchEnv, rate: int, seconds: float, hops: int = 1) -> dict[str, Any]:
    """Produce -> consume latency of the broker alone with the fabric's own clients, over
    ``hops`` topics (a relay consumes each and produces to the next), open loop."""
    s = env.settings
    topics = [s.topic(f"floor-{n}") for n in range(hops)]
    await ensure_topics(s, topics)
    consumers = [kafka.consumer(s) for _ in topics]
    for c, t in zip(consumers, topics, strict=True):
        await kafka.start(s, c)
        c.assign(await partitions_of(c, t))
        await c.seek_to_end(*c.assignment())
    producers = [kafka.producer(s, linger_ms=1) for _ in topics]
    for p in producers:
        await kafka.start(s, p)
    h = histogram()
    total = int(rate * seconds)

    async def relay(source: Any, out: Any, to: str) -> None:
        moved = 0
        while moved < total:
            for recs in (await source.getmany(timeout_ms=1000)).values():
                for r in recs:
                    await out.send(to, r.value, key=r.key)
                    moved += 1

    async def receive() -> None:
        got = 0
        while got < total:
            batch = await consumers[-1].getmany(timeout_ms=1000)
            now = time.time_ns()
            for recs in batch.values():
                for r in recs:
                    record(h, (now - int(r.value)) / 1e9)
                    got += 1

    tasks = [asyncio.create_task(relay(consumers[n], producers[n + 1], topics[n + 1])) for n in range(hops - 1)]
    tasks.append(asyncio.create_task(receive()))
    t0 = time.perf_counter()
    sent = 0
    try:
        while sent < total:
            due = min(total, int((time.perf_counter() - t0) * rate) + 1)
            while sent < due:
                await producers[0].send(topics[0], str(time.time_ns()).encode(), key=str(sent % 64).encode())
                sent += 1
            await asyncio.sleep(0.001)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        for t in tasks:
            t.cancel()
        for x in (*producers, *consumers):
            await x.stop()
    return summary(h)


async def takeover(broker: str, peer: bool) -> float:
    """Seconds from SIGKILL of a worker (restarted at once, or with a peer already running)
    until the materializer changes the cache again, while events flow."""
    import signal
    import sys

    import redis.asyncio as aioredis

    from fabric.settings import KafkaSettings

    with BenchEnv(
        f"takeover-{broker}-{peer}", broker=broker, session_timeout_ms=KafkaSettings().session_timeout_ms
    ) as env:
        s = env.settings
        r = aioredis.from_url(s.redis.url)
        first = env.spawn([sys.executable, "-m", "fabric", "worker", "--stages", "route,materialize"], "w1",
                          {"FABRIC_WORKER__METRICS_PORT": "0"})  # fmt: skip
        if peer:
            env.spawn([sys.executable, "-m", "fabric", "worker", "--stages", "route,materialize"], "w2",
                      {"FABRIC_WORKER__METRICS_PORT": "0"})  # fmt: skip
        stop = asyncio.Event()

        async def trickle() -> None:
            p = kafka.producer(s)
            await p.start()
            i = 0
            try:
                while not stop.is_set():
                    key, value = event(i, 1000)
                    await p.send(s.topic("ingest"), value, key=key)
                    i += 1
                    await asyncio.sleep(0.002)
            finally:
                await p.stop()

        feed = CacheKeys(s.redis.key_prefix).changes("bench")

        async def changes() -> int:
            return int(await r.xlen(feed))

        sender = asyncio.create_task(trickle())
        try:
            deadline = time.monotonic() + 120
            while await changes() < 2000:
                assert time.monotonic() < deadline, "the worker did not start"
                await asyncio.sleep(0.1)
            await asyncio.sleep(3)  # every worker has joined
            first.send_signal(signal.SIGKILL)
            first.wait()
            killed = time.monotonic()
            if not peer:
                env.spawn([sys.executable, "-m", "fabric", "worker", "--stages", "route,materialize"], "w1b",
                          {"FABRIC_WORKER__METRICS_PORT": "0"})  # fmt: skip
            await asyncio.sleep(0.5)  # what was in flight lands
            before = await changes()
            while await changes() < before + 1000:
                await asyncio.sleep(0.05)
                assert time.monotonic() - killed < 120, "no takeover within 120 s"
            return round(time.monotonic() - killed, 2)
        finally:
            stop.set()
            await sender
            await r.aclose()


async def one_broker(broker: str, quick: bool) -> dict[str, Any]:
    seconds = 3.0 if quick else 8.0
    started = time.monotonic()
    with BenchEnv(f"brokers-{broker}", broker=broker) as env:
        up_s = round(time.monotonic() - started, 2)
        broker_pid = next(p.pid() for p in env.stack.parts() if p.name == "broker")
        assert broker_pid is not None
        base = await floor(env, 1000, seconds)
        env.procs.start("worker")
        env.procs.start("router")
        env.procs.wait_ready()
        await asyncio.sleep(2)
        pushed = await push.one(env, 1, 1000, seconds, 0)
        memory = rss_mb(broker_pid)
    n = 50_000 if quick else 200_000
    throughput = await worker.fabric_workers(1, n, 15.0 if quick else 40.0, broker=broker)
    idle_run = await idle.one(broker, 0, 15.0 if quick else 60.0)
    out = {
        "broker": broker, "start_s": up_s, "broker_rss_mb": memory, "floor": base,
        "push": {k: pushed[k] for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms", "received", "expected")},
        "push_over_floor": {p: round(pushed[f"{p}_ms"] / base[f"{p}_ms"], 1) for p in ("p50", "p99", "p999")},
        "worker_events_per_s": throughput["events_per_s"], "idle_cores": idle_run["cores"],
        "idle_per_process": idle_run["per_process"],
        "takeover_restart_s": await takeover(broker, peer=False),
        "takeover_peer_s": await takeover(broker, peer=True),
    }  # fmt: skip
    print(f"  {broker:<6} up {up_s} s, {memory} MB; floor p50/p99/p999 {base['p50_ms']}/{base['p99_ms']}/"
          f"{base['p999_ms']} ms; push {pushed['p50_ms']}/{pushed['p99_ms']}/{pushed['p999_ms']} ms; "
          f"worker {throughput['events_per_s']} events/s; idle {idle_run['cores']} of a core; takeover after "
          f"SIGKILL {out['takeover_restart_s']} s (restarted), {out['takeover_peer_s']} s (peer)", flush=True)  # fmt: skip
    return out


async def run(quick: bool = False) -> dict[str, Any]:
    rows = [await one_broker("kafka", quick), await one_broker("tansu", quick)]
    summary = {
        r["broker"]: {"start_s": r["start_s"], "floor_p99_ms": r["floor"]["p99_ms"], "push_p99_ms": r["push"]["p99_ms"],
                      "worker_events_per_s": r["worker_events_per_s"], "idle_cores": r["idle_cores"],
                      "takeover_restart_s": r["takeover_restart_s"], "takeover_peer_s": r["takeover_peer_s"]}
        for r in rows
    }  # fmt: skip
    save("brokers", {"quick": quick, "summary": summary, "runs": rows})
    return {"summary": summary}

"""Idle: CPU the whole fabric burns when no event flows, per broker, side by side.

Each run starts a fresh stack (the broker, Redis), measures it alone for half the time
(the floor), then starts ``fabric worker``, ``sink`` and ``router``, waits until they are ready and settled, then reads every process's CPU time
from ``/proc`` over ``seconds`` (60; 15 with ``--quick``). Reported per process and in all,
as a fraction of one core. Apache Kafka is measured with the consumers' default fetch wait
(5 ms, what Tansu needs) and with long polls (500 ms)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from bench.env import BenchEnv, rss_mb, save

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


async def one(broker: str, fetch_wait_ms: int, seconds: float) -> dict[str, Any]:
    name = f"idle-{broker}-{fetch_wait_ms}"
    started = time.monotonic()
    with BenchEnv(name, broker=broker, fetch_max_wait_ms=fetch_wait_ms) as env:
        # the floor: the broker and Redis alone, before any fabric process joins
        await asyncio.sleep(5)
        stack_pids = {p.name: p.pid() for p in env.stack.parts()}
        before = {n: cpu_s(pid) for n, pid in stack_pids.items() if pid}
        await asyncio.sleep(seconds / 2)
        alone = {n: round((cpu_s(stack_pids[n]) - v) / (seconds / 2), 3) for n, v in before.items()}  # type: ignore[arg-type]
        for proc in ("worker", "sink", "router"):
            env.procs.start(proc)
        env.procs.wait_ready()
        up_s = round(time.monotonic() - started, 1)
        await asyncio.sleep(5)  # joins, rebalances and first checkpoints settle
        pids = {p.name: p.pid() for p in env.stack.parts()} | {n: p.pid for n, p in env.procs.procs.items()}
        before = {n: cpu_s(pid) for n, pid in pids.items() if pid}
        await asyncio.sleep(seconds)
        used = {n: round((cpu_s(pids[n]) - v) / seconds, 3) for n, v in before.items()}  # type: ignore[arg-type]
        memory = {n: rss_mb(pid) for n, pid in pids.items() if pid}
    total = round(sum(used.values()), 3)
    print(f"  {broker:<6} fetch wait {fetch_wait_ms:>3} ms: {total:.3f} of a core "
          f"({', '.join(f'{n} {v:.3f}' for n, v in used.items())}); up in {up_s} s", flush=True)  # fmt: skip
    print(f"         the broker and Redis alone before: {sum(alone.values()):.3f} of a core ({alone})", flush=True)
    return {"broker": broker, "fetch_max_wait_ms": fetch_wait_ms, "cores": total, "per_process": used,
            "stack_alone": alone, "stack_alone_cores": round(sum(alone.values()), 3),
            "rss_mb": memory, "stack_and_fabric_up_s": up_s}  # fmt: skip


async def run(quick: bool = False) -> dict[str, Any]:
    seconds = 15.0 if quick else 60.0
    runs = [await one("tansu", 5, seconds), await one("kafka", 5, seconds), await one("kafka", 500, seconds)]
    summary = {f"{r['broker']}@{r['fetch_max_wait_ms']}ms": r["cores"] for r in runs}
    save("idle", {"seconds": seconds, "summary": summary, "runs": runs})
    return {"summary": summary}

"""Pull latency and throughput, measured by an external load generator (wrk), with the worker and
the sink running beside the router, against a naive Starlette + redis-py endpoint in the same run.

10,000 subjects of mixed types are materialized first; wrk then rotates over all of them
(``bench/wrk/pull.lua``), paced to 1,000 … 15,000 requests/s in all (16 connections, one
thread), then unpaced (as fast as it goes). wrk measures each request from its write to
its last byte; the pacing keeps enough idle connections that a request rarely waits for one.
``BENCH_BROKER`` picks the broker (kafka by default)."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.env import RESULTS, BenchEnv, event, free_port, produce, save, wait_http
from bench.idle import cpu_s
from bench.plot import latency_vs_rate
from fabric.cache.keys import CacheKeys
from fabric.testing import bearer

SUBJECTS = 10_000
TYPES = {"page": "PageDSL", "saas": "SaaSRecord", "schema": "SQLSchema", "doc": "DocChunk", "metric": "Metric"}
SCRIPT = Path(__file__).resolve().parent / "wrk" / "pull.lua"
THREADS = 1  # wrk shares the two cores with everything it measures: one thread keeps its share small
CONNECTIONS = 16


def context_type(subject: str) -> str:
    for prefix, ct in (("page", "PageDSL"), ("acct", "SaaSRecord"), ("db.", "SQLSchema"), ("doc", "DocChunk")):
        if subject.startswith(prefix):
            return ct
    return "Metric"


async def wrk(
    url: str, paths: Path, rate: int | None, seconds: float, headers: dict[str, str], server_pid: int
) -> dict[str, Any]:
    """One wrk run; ``rate`` None is unpaced. Latencies in ms, rates per second, and the CPU the
    server and wrk used (fractions of one core; the server's also per request, in µs)."""
    server_cpu, wrk_cpu = cpu_s(server_pid), children_cpu_s()
    argv = ["wrk", "-t", str(THREADS), "-c", str(CONNECTIONS), "-d", f"{seconds:.0f}s", "-s", str(SCRIPT)]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    env = {**os.environ, "WRK_RATE": str(rate or 0), "WRK_THREADS": str(THREADS)}
    proc = await asyncio.create_subprocess_exec(
        *argv, url, "--", str(paths), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.decode()[-500:]} {out.decode()[-500:]}")
    r = json.loads(lines[-1])
    wall = r["duration_us"] / 1e6
    server_cpu, wrk_cpu = cpu_s(server_pid) - server_cpu, children_cpu_s() - wrk_cpu
    achieved = r["requests"] / wall
    return {"offered_rate": rate, "achieved_rate": round(achieved), "requests": r["requests"],
            "errors": r["errors"] + r["status_errors"], "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
            "p999_ms": r["p999_us"] / 1000, "max_ms": r["max_us"] / 1000,
            "server_cores": round(server_cpu / wall, 3), "server_us_per_request": round(server_cpu / r["requests"] * 1e6, 1),
            "wrk_cores": round(wrk_cpu / wall, 3)}  # fmt: skip


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def max_rate(runs: list[dict[str, Any]], p99_ms: float) -> int:
    """The highest paced rate the system kept (≥ 95 % achieved, no errors) at that p99."""
    ok = [r["offered_rate"] for r in runs if r["offered_rate"] and r["errors"] == 0
          and r["achieved_rate"] >= 0.95 * r["offered_rate"] and r["p99_ms"] <= p99_ms]  # fmt: skip
    return max(ok, default=0)


async def run(quick: bool = False) -> dict[str, Any]:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not on PATH: `make bench` installs it (Debian package wrk)")
    broker = os.environ.get("BENCH_BROKER", "kafka")
    rates = [5000, 10000] if quick else [1000, 5000, 10000, 12500, 15000]
    seconds = 4.0 if quick else 10.0
    with BenchEnv(f"pull-{broker}", broker=broker) as env:
        s = env.settings
        for proc in ("worker", "sink", "router"):
            env.procs.start(proc)
        env.procs.wait_ready()
        await produce(s, SUBJECTS, SUBJECTS)
        r = aioredis.from_url(s.redis.url)
        keys = CacheKeys(s.redis.key_prefix)
        deadline = time.monotonic() + 120
        while sum([await r.zcard(keys.recent("bench", ct)) for ct in TYPES.values()]) < SUBJECTS:
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not materialize the key set")
            await asyncio.sleep(0.2)
        targets = [(context_type(subject), subject)
                   for subject in (event(i, SUBJECTS)[0].decode().split("/", 1)[1] for i in range(SUBJECTS))]  # fmt: skip
        async with r.pipeline(transaction=False) as p:
            for ct, subject in targets:
                p.hget(keys.ctx("bench", ct, subject), "v")
            values = await p.execute()
        async with r.pipeline(transaction=False) as p:
            for (ct, subject), v in zip(targets, values, strict=True):
                p.set(f"naive:bench:{ct}:{subject}", v)
            await p.execute()
        await r.aclose()
        paths = s.data_dir / "paths.txt"
        paths.write_text("".join(f"/v1/contexts/{ct}/{subject}\n" for ct, subject in targets))
        naive_port = free_port()
        naive = env.spawn([sys.executable, "-m", "uvicorn", "bench.naive_app:app", "--port", str(naive_port),
                   "--log-level", "warning", "--no-access-log"], "naive")  # fmt: skip
        await wait_http(f"http://127.0.0.1:{naive_port}/v1/contexts/x/y")
        systems = {
            "fabric router": (f"http://127.0.0.1:{s.router.port}", bearer(s, "bench"), env.procs.procs["router"].pid),
            "naive starlette+redis-py": (f"http://127.0.0.1:{naive_port}", {"X-Fabric-Tenant": "bench"}, naive.pid),
        }
        series: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
        unpaced: dict[str, dict[str, Any]] = {}
        pids = {p.name: p.pid() for p in env.stack.parts()} | {n: p.pid for n, p in env.procs.procs.items()}
        pids["naive"] = naive.pid
        for rate in [*rates, None]:
            for name, (url, headers, pid) in systems.items():
                before = {n: cpu_s(p) for n, p in pids.items() if p}
                res = await wrk(url, paths, rate, seconds, headers, pid)
                res["cores_by_process"] = {n: round((cpu_s(p) - before[n]) / seconds, 3) for n, p in pids.items() if p}
                (series[name].append(res) if rate else unpaced.__setitem__(name, res))
                print(f"  pull {name:<26} {rate or 'unpaced'!s:>8}/s  achieved {res['achieved_rate']:>7}/s  "
                      f"p50 {res['p50_ms']} p99 {res['p99_ms']} p999 {res['p999_ms']} max {res['max_ms']} ms  "
                      f"errors {res['errors']}; server {res['server_cores']} cores ({res['server_us_per_request']} µs/request), "
                      f"wrk {res['wrk_cores']}; {res['cores_by_process']}", flush=True)  # fmt: skip
    summary = {name: {"p99_ms_at_5000": next((r["p99_ms"] for r in runs if r["offered_rate"] == 5000), None),
                      "max_rate_p99_le_5ms": max_rate(runs, 5.0), "unpaced_rate": unpaced[name]["achieved_rate"],
                      "unpaced_p99_ms": unpaced[name]["p99_ms"]}
               for name, runs in series.items()}  # fmt: skip
    result = {"broker": broker, "subjects": SUBJECTS, "seconds_per_run": seconds, "load_generator": "wrk",
              "threads": THREADS, "connections": CONNECTIONS, "beside": ["worker", "sink"], "summary": summary,
              "targets": {"p99_ms_at_5000": 2.0, "rate_at_p99_5ms": 10000}, "series": series, "unpaced": unpaced}  # fmt: skip
    save(f"pull-{broker}", result)
    latency_vs_rate(series, f"GET /v1/contexts (wrk, {CONNECTIONS} connections, 10k subjects; worker and sink "
                    f"beside, {broker})", RESULTS / f"pull-{broker}.png", 2.0)  # fmt: skip
    return result

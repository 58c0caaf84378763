"""Pull latency: GET /v1/contexts/... at fixed rates over 10k subjects of mixed types, beside a
naive Starlette + redis-py endpoint serving the same values and a raw Redis GET, in one run."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from typing import Any

import redis.asyncio as aioredis

from bench.env import RESULTS, BenchEnv, event, free_port, produce, save, wait_http
from bench.loadgen import drive, http_get, resp_framer, resp_get
from bench.plot import latency_vs_rate
from fabric.cache.keys import CacheKeys
from fabric.testing import bearer

SUBJECTS = 10_000
TYPES = {"page": "PageDSL", "saas": "SaaSRecord", "schema": "SQLSchema", "doc": "DocChunk", "metric": "Metric"}


def max_rate(runs: list[dict[str, Any]], p99_ms: float) -> float:
    ok = [r["offered_rate"] for r in runs
          if r["errors"] == 0 and r["achieved_rate"] >= 0.95 * r["offered_rate"] and (r["p99_ms"] or 1e9) <= p99_ms]  # fmt: skip
    return max(ok, default=0)


async def run(quick: bool = False) -> dict[str, Any]:
    rates = [1000, 5000, 10000] if quick else [1000, 2500, 5000, 7500, 10000, 12500, 15000]
    seconds = 3.0 if quick else 8.0
    with BenchEnv("pull") as env:
        s = env.settings
        env.procs.start("worker")
        env.procs.start("router")
        env.procs.wait_ready()
        await produce(s, SUBJECTS, SUBJECTS)
        r = aioredis.from_url(s.redis.url)
        keys = CacheKeys(s.redis.key_prefix)
        deadline = time.monotonic() + 120
        while sum([await r.zcard(keys.recent("bench", ct)) for ct in TYPES.values()]) < SUBJECTS:
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not materialize the key set")
            await asyncio.sleep(0.2)
        env.procs.kill("worker", signal.SIGTERM)  # quiet machine for the pull runs
        targets: list[tuple[str, str]] = []
        for i in range(SUBJECTS):
            key, _ = event(i, SUBJECTS)
            subject = key.decode().split("/", 1)[1]
            ct = next(v for k, v in TYPES.items() if subject.startswith(k) or (subject.startswith("db.") and k == "schema")
                      or (subject.startswith("acct") and k == "saas") or (subject.startswith("svc") and k == "metric"))  # fmt: skip
            targets.append((ct, subject))
        async with r.pipeline(transaction=False) as p:
            for ct, subject in targets:
                p.hget(keys.ctx("bench", ct, subject), "v")
            values = await p.execute()
        async with r.pipeline(transaction=False) as p:
            for (ct, subject), v in zip(targets, values, strict=True):
                p.set(f"naive:bench:{ct}:{subject}", v)
            await p.execute()
        await r.aclose()
        naive_port = free_port()
        env.spawn([sys.executable, "-m", "uvicorn", "bench.naive_app:app", "--port", str(naive_port),
                   "--log-level", "warning", "--no-access-log"], "naive")  # fmt: skip
        await wait_http(f"http://127.0.0.1:{naive_port}/v1/contexts/x/y")
        host = "127.0.0.1"
        # the same router with the security gateway off (loopback benchmarks only), for comparison
        open_port = free_port()
        env.spawn([sys.executable, "-m", "fabric", "router"], "router-auth-off",
                  {"FABRIC_SECURITY__AUTH": "off", "FABRIC_SECURITY__DEV_TENANT": "bench",
                   "FABRIC_ROUTER__PORT": str(open_port)})  # fmt: skip
        await wait_http(f"http://127.0.0.1:{open_port}/healthz")
        hdr = bearer(s, "bench")
        naive_hdr = {"X-Fabric-Tenant": "bench"}
        systems = {
            "fabric router (auth on)": (s.router.port, [http_get(host, s.router.port, f"/v1/contexts/{ct}/{sub}", hdr) for ct, sub in targets], None),
            "fabric router (auth off)": (open_port, [http_get(host, open_port, f"/v1/contexts/{ct}/{sub}", {}) for ct, sub in targets], None),
            "naive starlette+redis-py": (naive_port, [http_get(host, naive_port, f"/v1/contexts/{ct}/{sub}", naive_hdr) for ct, sub in targets], None),
            "raw redis GET": (int(s.redis.url.rsplit(":", 1)[1].split("/")[0]), [resp_get(f"naive:bench:{ct}:{sub}") for ct, sub in targets], resp_framer),
        }  # fmt: skip
        series: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
        for rate in rates:
            for name, (port, requests, framer) in systems.items():
                kw = {"framer": framer} if framer else {}
                res = await drive(host, port, requests, rate, seconds, connections=10, **kw)
                series[name].append(res)
                print(f"  pull {name:<26} {rate:>6}/s  achieved {res['achieved_rate']:>8.0f}/s  p50 {res['p50_ms']} "
                      f"p99 {res['p99_ms']} p999 {res['p999_ms']} max {res['max_ms']} ms  errors {res['errors']}", flush=True)  # fmt: skip
    summary = {name: {"max_rate_p99_le_5ms": max_rate(runs, 5.0),
                      "p99_ms_at_5000": next((r["p99_ms"] for r in runs if r["offered_rate"] == 5000), None)}
               for name, runs in series.items()}  # fmt: skip
    result = {"subjects": SUBJECTS, "seconds_per_run": seconds, "connections": 10, "summary": summary,
              "targets": {"p99_ms_at_5000": 2.0, "rate_at_p99_5ms": 10000}, "series": series}  # fmt: skip
    save("pull", result)
    latency_vs_rate(series, "GET /v1/contexts: open-loop, 10 connections, 10k subjects", RESULTS / "pull.png", 2.0)
    return result

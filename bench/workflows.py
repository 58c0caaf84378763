"""Reactions: how soon a trigger's first action reaches the target system, and how many
workflows a worker runs per second, beside the floor, in one run on Apache Kafka.

- **first action**: an event posted over HTTP (``saas.order.received``) -> the workflow's
  first step (an HTTP call) arrives at a loopback target. The path: router -> ingest ->
  route stage (typed topic, committed) -> trigger stage (run request) -> run stage (first
  state record acknowledged) -> the call.
- **floor**: the same events, read from the same typed topic (``read_committed``) by a
  bare aiokafka consumer that makes the same HTTP call at once: what any reaction to a
  committed event pays at least. The ratio says what the durable run costs on top.
- **workflows per second**: a burst of triggers, each run two sequential steps (each step
  saved before and after to the changelog), from the first post to the last second call.

``python -m bench workflows [--quick]``
"""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson

from bench.env import BenchEnv, save
from bench.hist import histogram, record, summary
from fabric import kafka
from fabric.events.headers import CACHE_JSON
from fabric.kafka.compacted import publish
from fabric.kafka.topics import ensure_topics
from fabric.testing import bearer

TENANT = "bench"


class Target:
    """A loopback HTTP system noting when each (path, trigger id) first arrives."""

    def __init__(self) -> None:
        self.arrived: dict[tuple[str, str], int] = {}
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = orjson.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
                target.arrived.setdefault((self.path, str(body.get("id"))), time.time_ns())
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", "11")
                self.end_headers()
                self.wfile.write(b'{"ok":true}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self, path: str, ids: set[str]) -> int:
        return sum(1 for (p, i) in list(self.arrived) if p == path and i in ids)


def workflow() -> dict[str, Any]:
    return {"name": "bench-order", "version": 1, "triggers": [{"event": "saas.order.received"}],
            "phases": [{"id": "process", "type": "sequential", "steps": [
                {"id": "first", "system": "target", "http": {"path": "/first", "body": {"id": "{{ trigger.id }}"}}},
                {"id": "second", "system": "target", "http": {"path": "/second", "body": {"id": "{{ trigger.id }}"}}},
            ]}]}  # fmt: skip


def order(i: int, tag: str) -> dict[str, Any]:
    return {"id": f"{tag}-{i}", "source": "bench://orders", "type": "saas.order.received", "subject": f"o-{i % 50}",
            "data": {"system": "shop", "object": "order", "record_id": f"o-{i}", "fields": {"amount": 10 + i}}}  # fmt: skip


async def _floor(env: BenchEnv, target: Target, stop: asyncio.Event) -> None:
    """A bare consumer of the typed topic making the first call for every order."""
    s = env.settings
    c = kafka.consumer(s, group=f"bench-floor-{time.time_ns()}", isolation_level="read_committed",
                       auto_offset_reset="latest", fetch_max_wait_ms=0)  # fmt: skip
    await kafka.start(s, c)
    try:
        c.subscribe([s.topic("saas")])
        async with httpx.AsyncClient(base_url=target.url, timeout=10) as http:
            while not stop.is_set():
                for recs in (await c.getmany(timeout_ms=100)).values():
                    for r in recs:
                        ev = orjson.loads(dict(r.headers or ())[CACHE_JSON])
                        if ev.get("type") == "saas.order.received":
                            await http.post("/floor", json={"id": ev["id"]})
    finally:
        await c.stop()


async def run(quick: bool = False) -> dict[str, Any]:
    n_latency, n_burst = (40, 100) if quick else (300, 1000)
    target = Target()
    with BenchEnv("workflows", broker="kafka") as env:
        s = env.settings
        env.settings = s = s.model_copy(
            update={"workflows": s.workflows.model_copy(update={"allowed_hosts": ["127.0.0.1"]})}
        )
        env.procs.settings = s
        await ensure_topics(s, [s.topic("registry")])
        system = {"system": {"id": "target", "kind": "http", "endpoint": target.url, "security_level": "internal"}}
        await publish(s, s.topic("registry"), [
            (f"system:{TENANT}/target".encode(), orjson.dumps(system)),
            (f"workflow:{TENANT}/bench-order".encode(), orjson.dumps(workflow())),
        ])  # fmt: skip
        for name in ("worker", "router"):
            env.procs.start(name)
        env.procs.wait_ready()
        stop = asyncio.Event()
        floor = asyncio.create_task(_floor(env, target, stop))
        async with httpx.AsyncClient(base_url=env.procs.url, headers=bearer(s, TENANT), timeout=30) as http:
            # warm-up: the first runs pay for connections and the consumer groups settling
            for i in range(5):
                assert (await http.post("/v1/events", json=order(i, "warm"))).status_code == 202
            warm = {f"warm-{i}" for i in range(5)}
            deadline = time.monotonic() + 120
            while target.count("/second", warm) < 5 or target.count("/floor", warm) < 5:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"warm-up runs did not finish (see {env.procs.log_dir}/worker.log)")
                await asyncio.sleep(0.2)

            # latency: one trigger at a time, 20 per second (open loop)
            sent: dict[str, int] = {}
            for i in range(n_latency):
                ev = order(i, "lat")
                sent[ev["id"]] = time.time_ns()
                assert (await http.post("/v1/events", json=ev)).status_code == 202
                await asyncio.sleep(0.05)
            ids = set(sent)
            deadline = time.monotonic() + 60
            while (target.count("/first", ids) < len(ids) or target.count("/floor", ids) < len(ids)) and (
                time.monotonic() < deadline
            ):
                await asyncio.sleep(0.2)
            first, flo = histogram(), histogram()
            for i, t0 in sent.items():
                if ("/first", i) in target.arrived:
                    record(first, (target.arrived["/first", i] - t0) / 1e9)
                if ("/floor", i) in target.arrived:
                    record(flo, (target.arrived["/floor", i] - t0) / 1e9)

            # throughput: a burst of triggers in batches of 100
            t0 = time.time_ns()
            burst = [order(i, "burst") for i in range(n_burst)]
            for k in range(0, n_burst, 100):
                assert (await http.post("/v1/events", json=burst[k : k + 100])).status_code == 202
            bids = {e["id"] for e in burst}
            deadline = time.monotonic() + 300
            while target.count("/second", bids) < n_burst and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            done = [target.arrived[p] for p in target.arrived if p[0] == "/second" and p[1] in bids]
            seconds = (max(done) - t0) / 1e9 if done else float("nan")
        stop.set()
        await floor
    target.server.shutdown()
    fs, ls = summary(first), summary(flo)
    result = {
        "first_action": fs,
        "floor": ls,
        "ratio_p50": round(fs["p50_ms"] / ls["p50_ms"], 2) if fs["count"] and ls["count"] else None,
        "ratio_p99": round(fs["p99_ms"] / ls["p99_ms"], 2) if fs["count"] and ls["count"] else None,
        "burst": {
            "runs": n_burst,
            "completed": len(done),
            "seconds": round(seconds, 2),
            "workflows_per_s": round(len(done) / seconds, 1) if done else None,
        },
    }
    save("workflows", result)
    return {"summary": result}

"""Abuse: what a caller with a valid low-privilege token can do to everyone else.

Each scenario runs against a real fabric (worker, sink, router) with default limits,
while a probe pulls one context every 10 ms with another tenant's token. Reported:
- ``stall``: the probe's worst and p99 latency during the attack, beside its p99 at rest
  (the floor), and the router's resident memory before, at peak and after;
- ``resume``: pushes another subscriber of the tenant still gets after a forged resume token;
- ``avro``: a tiny Avro record declaring millions of items (where it went, worker memory,
  and how long another tenant's event then took to reach the cache);
- ``ratelimit``: the fraction refused at a steady 60% of a token's limit, and what a
  burst got admitted against what the bucket owed (burst + rate x duration);
- ``redis_down``: status codes of ingest and pull while Redis is paused, and how long
  the first pull took.
"""

from __future__ import annotations

import asyncio
import copy
import io
import os
import signal
import time
import uuid
from collections import Counter
from typing import Any

import fastavro
import httpx
import orjson
import websockets

from bench.env import BenchEnv, rss_mb, save
from bench.hist import histogram, record, summary
from bench.loadgen import drive, http_get
from fabric import kafka
from fabric.events.catalogue import Catalogue
from fabric.settings import SecuritySettings
from fabric.testing import bearer, operator

VICTIM, ATTACKER = "victim", "mallory"


def page(tenant: str, subject: str, seq: int = 1) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "source": "bench://abuse", "type": "page.updated", "subject": subject,
            "tenant": tenant, "sequence": seq, "data": {"app": "a", "page": subject, "title": "t"}}  # fmt: skip


class Probe:
    """Pulls one context every 10 ms with the victim's token; latencies per phase."""

    def __init__(self, url: str, headers: dict[str, str], path: str) -> None:
        self.url, self.headers, self.path = url, headers, path
        self.hist = histogram()
        self.worst = 0.0
        self.statuses: Counter[int] = Counter()

    def reset(self) -> None:
        self.hist, self.worst, self.statuses = histogram(), 0.0, Counter()

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=60) as c:
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    self.statuses[(await c.get(self.path)).status_code] += 1
                except httpx.HTTPError:
                    self.statuses[0] += 1
                took = time.perf_counter() - t
                record(self.hist, took)
                self.worst = max(self.worst, took)
                await asyncio.sleep(0.01)

    def result(self) -> dict[str, Any]:
        return {**summary(self.hist), "worst_ms": round(self.worst * 1000, 1), "statuses": dict(self.statuses)}


async def watched(env: BenchEnv, probe: Probe, attack: Any) -> dict[str, Any]:
    pid = env.procs.procs["router"].pid
    before, peak = rss_mb(pid), 0.0
    probe.reset()
    stop = asyncio.Event()
    task = asyncio.create_task(probe.run(stop))

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    t = time.perf_counter()
    try:
        detail = await attack()
    finally:
        took = time.perf_counter() - t
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(task, sampler)
    return {"attack_s": round(took, 2), "probe": probe.result(), "router_rss_mb": {
        "before": before, "peak": peak, "after": rss_mb(pid)}, **(detail or {})}  # fmt: skip


async def stall(env: BenchEnv, probe: Probe) -> dict[str, Any]:
    s = env.settings
    writer = bearer(s, ATTACKER, ["events:write"])
    nobody = bearer(s, ATTACKER, [])
    out: dict[str, Any] = {}
    rest = await watched(env, probe, lambda: asyncio.sleep(3))
    out["at_rest"] = rest["probe"]

    async def curl(body: bytes, content_type: str, n: int) -> Any:
        """POST ``body`` ``n`` times at once from curl processes, so this process's event
        loop only runs the probe (an in-process client sending 5 MB would delay the probe
        itself and be counted as the router's stall)."""
        path = env.settings.data_dir / "attack.body"
        path.write_bytes(body)
        args = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "-X", "POST",
                "-H", f"Authorization: {writer['Authorization']}", "-H", f"content-type: {content_type}",
                "--data-binary", f"@{path}", f"{env.procs.url}/v1/events"]  # fmt: skip
        procs = [await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE) for _ in range(n)]
        outs = [(await p.communicate())[0].decode().split() for p in procs]
        return {"statuses": [int(o[0]) for o in outs], "answer_bytes": max(int(o[1]) for o in outs)}

    ndjson = b"1\n" * (s.router.max_body_bytes // 2 - 8)
    out["ndjson_5mb_x1"] = await watched(env, probe, lambda: curl(ndjson, "application/x-ndjson", 1))
    out["ndjson_5mb_x6"] = await watched(env, probe, lambda: curl(ndjson, "application/x-ndjson", 6))
    array = b"[" + b"1," * (s.router.max_body_bytes // 2 - 8) + b"1]"
    out["json_array_5mb"] = await watched(env, probe, lambda: curl(array, "application/json", 1))

    async def patterns(subscribe: list[str]) -> Any:
        try:
            async with websockets.connect(env.procs.url.replace("http", "ws") + "/v1/subscribe",
                                          additional_headers=nobody, max_size=None) as ws:  # fmt: skip
                await ws.send(orjson.dumps({"subscribe": subscribe}).decode())
                return {"answer": (await asyncio.wait_for(ws.recv(), 60))[:120]}
        except (websockets.ConnectionClosed, websockets.InvalidStatus) as e:
            return {"answer": str(e)[:120]}

    out["ws_glob_1mb"] = await watched(env, probe, lambda: patterns(["*?" * 500_000]))
    out["ws_100k_patterns"] = await watched(env, probe, lambda: patterns([f"p{i}.*" for i in range(100_000)]))
    return out


async def forged_resume(env: BenchEnv) -> dict[str, Any]:
    s = env.settings
    tenant = f"r{uuid.uuid4().hex[:6]}"
    ws_url = env.procs.url.replace("http", "ws") + "/v1/subscribe"
    got: list[Any] = []
    async with httpx.AsyncClient(base_url=env.procs.url, headers=bearer(s, tenant), timeout=10) as c:
        await c.post("/v1/events", json=page(tenant, "first"))  # the tenant has a feed
        # the forger connects first, while nobody reads the tenant's feed yet
        async with websockets.connect(ws_url, additional_headers=bearer(s, tenant)) as forger:
            await forger.send(orjson.dumps({"subscribe": ["page.*"], "resume": "9999999999999-0"}).decode())
            forged_answer = (await forger.recv())[:200]
            async with websockets.connect(ws_url, additional_headers=bearer(s, tenant)) as honest:
                await honest.send(orjson.dumps({"subscribe": ["page.*"]}).decode())
                await honest.recv()
                for i in range(10):
                    await c.post("/v1/events", json=page(tenant, f"p{i}"))
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and len([m for m in got if "event" in m]) < 10:
                    try:
                        got.append(orjson.loads(await asyncio.wait_for(honest.recv(), 0.5)))
                    except TimeoutError:
                        pass
    return {"forged_answer": forged_answer, "honest_pushes_of_10": len([m for m in got if "event" in m])}


def avro_bytes(schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(copy.deepcopy(schema)), record)
    return buf.getvalue()


def varint(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


async def avro_bomb(env: BenchEnv, probe: Probe) -> dict[str, Any]:
    s = env.settings
    schema = copy.deepcopy(Catalogue.load(s.schemas_dir).schemas.data_raw("DocChunk"))
    schema["fields"].append({"name": "pad", "type": {"type": "array", "items": "null"}, "default": []})
    async with httpx.AsyncClient(base_url=env.procs.url, timeout=30) as c:
        r = await c.post("/subjects/DocChunk/versions", json={"schema": orjson.dumps(schema).decode()},
                         headers=operator(s))  # fmt: skip
    registered = {"status": r.status_code, "answer": r.text[:200]}
    if r.status_code != 200:
        return {"registered": registered}
    sid = r.json()["id"]
    ok = {"doc_id": "d", "chunk": 0, "text": "x", "title": "t"}
    base = avro_bytes(schema, {**ok, "pad": []})
    bomb = base[:-1] + varint(30_000_000) + b"\x00"  # the last field: one block of 3e7 nulls, then the end
    headers = [("ce_specversion", b"1.0"), ("ce_id", b"bomb"), ("ce_source", b"bench"), ("ce_type", b"doc.chunked"),
               ("ce_subject", b"d"), ("ce_tenant", ATTACKER.encode()), ("content-type", b"application/avro")]  # fmt: skip
    worker = env.procs.procs["worker"].pid
    before = rss_mb(worker)
    p = kafka.producer(s)
    await kafka.start(s, p)
    try:
        await p.send_and_wait(s.topic("ingest"), b"\x00" + sid.to_bytes(4, "big") + bomb, key=b"mallory/d",
                              headers=headers)  # fmt: skip
        peak = before
        t = time.perf_counter()
        await p.send_and_wait(s.topic("ingest"), orjson.dumps(page(VICTIM, "after-bomb")), key=b"victim/after-bomb")
        victim_ms = None
        async with httpx.AsyncClient(base_url=env.procs.url, headers=bearer(s, VICTIM), timeout=10) as c:
            while time.perf_counter() - t < 60:
                peak = max(peak, rss_mb(worker))
                if (await c.get("/v1/contexts/PageDSL/after-bomb")).status_code == 200:
                    victim_ms = round((time.perf_counter() - t) * 1000, 1)
                    break
                await asyncio.sleep(0.05)
    finally:
        await p.stop()
    return {"registered": registered, "record_bytes": len(bomb) + 5, "worker_rss_mb": {"before": before, "peak": peak},
            "victim_event_cached_after_ms": victim_ms}  # fmt: skip


async def ratelimit(env: BenchEnv) -> dict[str, Any]:
    s = env.settings
    sec = SecuritySettings()  # the defaults: what a deployment gets
    limit = sec.token_rate
    async with httpx.AsyncClient(base_url=env.procs.url, timeout=10) as c:
        await c.post("/v1/events", json=page("rl", "x"), headers=bearer(s, "rl"))
        while (await c.get("/v1/contexts/PageDSL/x", headers=bearer(s, "rl"))).status_code != 200:
            await asyncio.sleep(0.1)
    out: dict[str, Any] = {"token_rate": limit.rate, "token_burst": limit.burst}
    steady = [http_get("127.0.0.1", s.router.port, "/v1/contexts/PageDSL/x", bearer(s, "rl"))]
    r = await drive("127.0.0.1", s.router.port, steady, limit.rate * 0.6, 5.0, connections=10, warmup=0)
    offered = round(limit.rate * 0.6 * 5)
    out["steady_60pct"] = {"offered": offered, "admitted": r["achieved_rate"] * 5, "refused_fraction":
                           round(r["errors"] / max(1, r["errors"] + r["achieved_rate"] * 5), 3)}  # fmt: skip
    await asyncio.sleep(limit.burst / limit.rate + 1)  # the bucket refills
    burst = [http_get("127.0.0.1", s.router.port, "/v1/contexts/PageDSL/x", bearer(s, "rl", sub="burst"))]
    seconds = 5.0
    r = await drive("127.0.0.1", s.router.port, burst, 4000, seconds, connections=20, warmup=0)
    admitted = r["achieved_rate"] * seconds
    due = limit.burst + limit.rate * seconds
    out["burst_4000_per_s"] = {"offered": 4000 * seconds, "admitted": admitted, "due": due,
                               "admitted_of_due": round(admitted / due, 3)}  # fmt: skip
    return out


async def redis_down(env: BenchEnv) -> dict[str, Any]:
    s = env.settings
    pid = next(p.pid() for p in env.stack.parts() if p.name == "redis")
    assert pid is not None
    statuses: dict[str, Counter[int]] = {"ingest": Counter(), "pull": Counter()}
    first_pull_ms = None
    async with httpx.AsyncClient(base_url=env.procs.url, headers=bearer(s, VICTIM), timeout=30) as c:
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 10:
                t = time.perf_counter()
                r = await c.get("/v1/contexts/PageDSL/probe")
                if first_pull_ms is None:
                    first_pull_ms = round((time.perf_counter() - t) * 1000, 1)
                statuses["pull"][r.status_code] += 1
                r = await c.post("/v1/events", json=page(VICTIM, "during"))
                statuses["ingest"][r.status_code] += 1
                await asyncio.sleep(0.1)
        finally:
            os.kill(pid, signal.SIGCONT)
    return {"paused_s": 10, "first_pull_ms": first_pull_ms, **{k: dict(v) for k, v in statuses.items()}}


async def run(quick: bool = False) -> dict[str, Any]:
    with BenchEnv("abuse") as env:
        # default limits (BenchEnv raises them for load tests)
        env.settings = env.settings.model_copy(update={"security": SecuritySettings()})
        env.procs.settings = env.settings
        for name in ("worker", "sink", "router"):
            env.procs.start(name)
        env.procs.wait_ready()
        s = env.settings
        async with httpx.AsyncClient(base_url=env.procs.url, headers=bearer(s, VICTIM), timeout=10) as c:
            await c.post("/v1/events", json=page(VICTIM, "probe"))
            while (await c.get("/v1/contexts/PageDSL/probe")).status_code != 200:
                await asyncio.sleep(0.1)
        probe = Probe(env.procs.url, bearer(s, VICTIM, ["context:read:PageDSL"]), "/v1/contexts/PageDSL/probe")
        result: dict[str, Any] = {}
        only = set(filter(None, os.environ.get("BENCH_ABUSE_ONLY", "").split(",")))
        for name, scenario in [
            ("stall", lambda: stall(env, probe)),
            ("resume", lambda: forged_resume(env)),
            ("ratelimit", lambda: ratelimit(env)),
            ("avro", lambda: avro_bomb(env, probe)),
            ("redis_down", lambda: redis_down(env)),
        ]:
            if only and name not in only:
                continue
            print(f"  {name} ...", flush=True)
            try:
                result[name] = await scenario()
            except Exception as e:  # one scenario failing still reports the others
                result[name] = {"failed": f"{type(e).__name__}: {e}"}
            print(f"  {name}: {orjson.dumps(result[name], option=orjson.OPT_NON_STR_KEYS).decode()[:1500]}", flush=True)
    save(os.environ.get("BENCH_ABUSE_NAME", "abuse"), {"summary": result})
    return {"summary": result}

"""A fresh embedded stack per benchmark, on free loopback ports, under .fabric/bench/."""

from __future__ import annotations

import asyncio
import json
import platform
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import orjson

from fabric import kafka
from fabric.dev.procs import Processes, free_port
from fabric.dev.stack import Stack
from fabric.settings import (
    ClickHouseSettings,
    KafkaSettings,
    RateLimit,
    RedisSettings,
    RouterSettings,
    SecuritySettings,
    Settings,
    WorkerSettings,
)

RESULTS = Path(__file__).resolve().parent / "results"


class BenchEnv:
    def __init__(
        self, name: str, partitions: int = 4, broker: str = "tansu", fetch_max_wait_ms: int = 0,
        session_timeout_ms: int = 3000,
    ) -> None:  # fmt: skip
        self.name = name
        data = Path(".fabric/bench").resolve() / name
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        self.settings = Settings(
            data_dir=data,
            kafka=KafkaSettings(
                bootstrap=f"127.0.0.1:{free_port()}",
                topic_prefix="b",
                partitions=partitions,
                session_timeout_ms=session_timeout_ms,
                broker=broker,
                controller_port=free_port(),
                fetch_max_wait_ms=fetch_max_wait_ms,
            ),
            redis=RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0"),
            clickhouse=ClickHouseSettings(url=f"chdb://{data / 'chdb'}"),
            router=RouterSettings(port=free_port()),
            worker=WorkerSettings(metrics_port=free_port(), log_level="warning"),
            # the load generator is one tenant and one token: limits high enough not to refuse it
            security=SecuritySettings(
                tenant_rate=RateLimit(rate=1e6, burst=1_000_000), token_rate=RateLimit(rate=1e6, burst=1_000_000)
            ),
        )
        self.stack = Stack(self.settings)
        self.procs = Processes(self.settings)
        self.extra: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> BenchEnv:
        self.stack.up(timeout=120)
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        for p in self.extra:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.stop()
        self.stack.down()

    def spawn(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.procs.log_dir / f"{name}.log", "ab") as log:
            p = subprocess.Popen(argv, env={**self.procs.env(), **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
        self.extra.append(p)
        return p


def event(i: int, n_subjects: int, tenant: str = "bench", seq: int | None = None) -> tuple[bytes, bytes]:
    """A realistic mixed-type event (~0.5-1.5 KB): (key, value)."""
    subject_no = i % n_subjects
    kind = subject_no % 10
    sent = time.time_ns()
    if kind < 4:
        t, subj, data = "page.updated", f"page-{subject_no}", {
            "app": "order-desk", "page": f"page-{subject_no}", "title": f"Page {subject_no}", "route": f"/p/{subject_no}",
            "author": "dana", "entities": ["orders", "customers"],
            "components": [{"id": f"c{k}", "kind": "table", "props": {"rows": 25, "label": "Orders"}, "bindings": ["orders"]}
                           for k in range(3)]}  # fmt: skip
    elif kind < 6:
        t, subj, data = "saas.account.updated", f"acct-{subject_no}", {
            "system": "crm", "object": "Account", "record_id": f"A-{subject_no}",
            "fields": {"name": f"Customer {subject_no}", "tier": "gold", "arr": 120000, "owner": "lee"}}  # fmt: skip
    elif kind < 7:
        t, subj, data = "schema.altered", f"db.table-{subject_no}", {
            "database": "shop", "table": f"table-{subject_no}", "change": "altered", "primary_key": ["id"],
            "columns": [{"name": f"col{k}", "type": "String", "nullable": True} for k in range(8)]}  # fmt: skip
    elif kind < 8:
        t, subj, data = "doc.chunked", f"doc-{subject_no}", {
            "doc_id": f"doc-{subject_no}", "chunk": 0, "text": "lorem ipsum " * 40, "title": "Runbook"}  # fmt: skip
    else:
        t, subj, data = "metric.sample", f"svc-{subject_no}:latency", {
            "name": "latency_p95", "value": 120.5, "unit": "ms", "service": f"svc-{subject_no}",
            "labels": {"route": "/orders", "sent_ns": str(sent)}}  # fmt: skip
    body = {"id": f"ev-{i}", "source": "bench://gen", "type": t, "subject": subj, "tenant": tenant,
            "sequence": seq if seq is not None else i + 1, "data": data}  # fmt: skip
    return f"{tenant}/{subj}".encode(), orjson.dumps(body)


async def produce(settings: Settings, n: int, n_subjects: int, tenant: str = "bench") -> float:
    """Produce n events to ctx.ingest as fast as the broker takes them; returns seconds."""
    p = kafka.producer(settings, linger_ms=10, max_batch_size=1 << 20)
    await kafka.start(settings, p)
    started = time.perf_counter()
    try:
        futures = []
        for i in range(n):
            key, value = event(i, n_subjects, tenant)
            futures.append(await p.send(settings.topic("ingest"), value, key=key))
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await p.stop()
    return time.perf_counter() - started


async def wait_http(url: str, timeout: float = 30) -> None:
    """Until something answers HTTP at ``url`` (any status)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as c:
        while True:
            try:
                await c.get(url, timeout=1)
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


def rss_mb(pid: int) -> float:
    """A process's resident memory in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def machine() -> dict[str, Any]:
    return {
        "cpus": len(__import__("os").sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {"benchmark": name, "machine": machine(), **result}
    path.write_text(json.dumps(result, indent=2))
    return path

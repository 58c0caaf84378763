"""The real stack for integration tests: Tansu, Redis and the chdb engine, started by the
project's own ``Stack`` on free loopback ports, plus real ``fabric worker/sink/router``
processes. Tests share the processes and isolate themselves by tenant and subject."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest
import websockets

from fabric import kafka
from fabric.dev.procs import Processes, free_port
from fabric.dev.stack import Stack
from fabric.events.catalogue import Catalogue
from fabric.events.headers import CACHE_KEY
from fabric.kafka.topics import partitions_of
from fabric.settings import (
    ClickHouseSettings,
    KafkaSettings,
    RedisSettings,
    RouterSettings,
    Settings,
    WorkerSettings,
)
from fabric.testing import bearer

T = TypeVar("T")
#: the broker the suite runs on: FABRIC_TEST_BROKER=kafka (Apache Kafka, KRaft) or tansu
BROKER = os.environ.get("FABRIC_TEST_BROKER", "kafka")
ROOT = Path(__file__).resolve().parents[2]


async def eventually(fn: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll ``fn`` (sync or async) until it returns a truthy value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last value: {last!r})")


@contextlib.contextmanager
def loopback_http(respond: Callable[[str], tuple[int, bytes]]) -> Iterator[str]:
    """A real HTTP server on loopback whose GETs answer ``respond(path) -> (status, JSON)``;
    yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = respond(self.path)
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def answers(url: str) -> bool:
    """Whether a router at ``url`` answers ``/healthz`` with 200 (for ``eventually``)."""
    async with httpx.AsyncClient(timeout=1) as c:
        try:
            return (await c.get(f"{url}/healthz")).status_code == 200
        except httpx.HTTPError:
            return False


@pytest.fixture
def spawn(fabric: Fabric, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``python ARGS...`` with the fabric's environment; stopped (SIGTERM) after the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        with (tmp_path / f"spawned-{len(procs)}.log").open("wb") as log:
            p = subprocess.Popen(
                [sys.executable, *args], env=fabric.env(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("fabric")
    return Settings(
        data_dir=data,
        kafka=KafkaSettings(
            bootstrap=f"127.0.0.1:{free_port()}",
            topic_prefix=f"t{uuid.uuid4().hex[:8]}",
            partitions=4,
            # fast failover: Tansu lets a restarted member in once the dead one's session ends
            session_timeout_ms=3000,
            controller_port=free_port(),
            broker=BROKER,
        ),
        redis=RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", key_prefix="fabric"),
        clickhouse=ClickHouseSettings(url=f"chdb://{data / 'chdb'}", flush_interval_s=0.3),
        router=RouterSettings(port=free_port()),
        worker=WorkerSettings(metrics_port=0),
    )


@pytest.fixture(scope="session")
def stack(stack_settings: Settings) -> Iterator[Stack]:
    st = Stack(stack_settings)
    st.up()
    yield st
    st.down()


class Fabric(Processes):
    """Real ``fabric`` processes (worker, sink, router) for one set of settings."""

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/v1/subscribe"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fabric", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )


def start_fabric(settings: Settings, names: tuple[str, ...] = ("worker", "sink", "router"), **env: str) -> Fabric:
    fab = Fabric(settings, settings.data_dir / "logs", **env)
    try:
        for name in names:
            fab.start(name)
        if "router" in names:
            fab.wait_ready()
    except BaseException:
        fab.stop()
        raise
    return fab


def variant(settings: Settings, tmp: Path) -> Settings:
    """The same broker and Redis with fresh topics, keys, router port and data dir."""
    tag = uuid.uuid4().hex[:8]
    return settings.model_copy(
        update={
            "data_dir": tmp,
            "kafka": settings.kafka.model_copy(update={"topic_prefix": f"v{tag}"}),
            "redis": settings.redis.model_copy(update={"key_prefix": f"fabric{tag}"}),
            "clickhouse": settings.clickhouse.model_copy(update={"url": f"chdb://{tmp / 'chdb'}"}),
            "router": settings.router.model_copy(update={"port": free_port()}),
        }
    )


@pytest.fixture(scope="session")
def fabric(stack: Stack, stack_settings: Settings) -> Iterator[Fabric]:
    fab = start_fabric(stack_settings)
    yield fab
    fab.stop()


@pytest.fixture
def tenant() -> str:
    return f"tn{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def http(fabric: Fabric, tenant: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fabric.url, headers=bearer(fabric.settings, tenant), timeout=15) as c:
        yield c


class Subscription:
    """A WebSocket subscriber collecting pushes in the background."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for m in self.ws:
                self.messages.append(orjson.loads(m))
        except websockets.ConnectionClosed:
            pass

    def pushes(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if "event" in m]

    async def close(self) -> None:
        await self.ws.close()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def subscribe(fabric: Fabric) -> AsyncIterator[Callable[..., Any]]:
    subs: list[Subscription] = []

    async def open_(tenant: str, patterns: list[str]) -> Subscription:
        ws = await websockets.connect(fabric.ws_url, additional_headers=bearer(fabric.settings, tenant))
        await ws.send(orjson.dumps({"subscribe": patterns}).decode())
        ack = orjson.loads(await ws.recv())
        assert ack["subscribed"] == patterns
        sub = Subscription(ws)
        subs.append(sub)
        return sub

    yield open_
    for s in subs:
        await s.close()


async def typed_ids(s: Settings, context_type: str = "PageDSL") -> list[str]:
    """Every event id in a context type's topic, read to its end as ``read_committed``
    readers see it (what the route stage committed)."""
    consumer = kafka.consumer(s, max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    ids: list[str] = []
    try:
        catalogue = Catalogue.load(s.schemas_dir)
        tps = await partitions_of(consumer, s.topic(catalogue[context_type].topic))
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for recs in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).values():
                ids.extend(orjson.loads(dict(r.headers)[CACHE_KEY])[5] for r in recs)
    finally:
        await consumer.stop()
    return ids

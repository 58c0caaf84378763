"""The real stack for integration tests: Tansu, Redis and the chdb engine, started by the
project's own ``Stack`` on free loopback ports, plus real ``fabric worker/sink/router``
processes. Tests share the processes and isolate themselves by tenant and subject."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest
import websockets

from fabric.dev.stack import Stack
from fabric.settings import (
    ClickHouseSettings,
    KafkaSettings,
    RedisSettings,
    RouterSettings,
    Settings,
    WorkerSettings,
)

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_of(s: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")}
    env.update({
        "FABRIC_DATA_DIR": str(s.data_dir),
        "FABRIC_KAFKA__BOOTSTRAP": s.kafka.bootstrap,
        "FABRIC_KAFKA__TOPIC_PREFIX": s.kafka.topic_prefix,
        "FABRIC_REDIS__URL": s.redis.url,
        "FABRIC_REDIS__KEY_PREFIX": s.redis.key_prefix,
        "FABRIC_KAFKA__PARTITIONS": str(s.kafka.partitions),
        "FABRIC_KAFKA__SESSION_TIMEOUT_MS": str(s.kafka.session_timeout_ms),
        "FABRIC_CLICKHOUSE__FLUSH_INTERVAL_S": str(s.clickhouse.flush_interval_s),
        "FABRIC_CLICKHOUSE__URL": s.clickhouse.url,
        "FABRIC_ROUTER__PORT": str(s.router.port),
        "FABRIC_WORKER__METRICS_PORT": "0",
    })  # fmt: skip
    return env


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


@dataclass
class Fabric:
    """Real ``fabric`` processes (worker, sink, router) for one set of settings."""

    settings: Settings
    procs: dict[str, subprocess.Popen[bytes]]
    extra_env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.router.port}"

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/v1/subscribe"

    @property
    def logs(self) -> Path:
        path = self.settings.data_dir / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def env(self) -> dict[str, str]:
        return {**env_of(self.settings), **self.extra_env}

    def start(self, name: str) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "fabric", name], env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )
        return self.procs[name]

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs[name]
        p.send_signal(sig)
        p.wait(30)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead} exited: {self.log(dead[0])[-3000:]}")
            try:
                r = httpx.get(self.url + "/healthz", timeout=1)
                if r.status_code == 200 and r.json()["cache_ready"]:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("router did not become healthy")
            time.sleep(0.2)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

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
    fab = Fabric(settings, {}, env)
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
    async with httpx.AsyncClient(base_url=fabric.url, headers={"X-Fabric-Tenant": tenant}, timeout=15) as c:
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
        ws = await websockets.connect(fabric.ws_url, additional_headers={"X-Fabric-Tenant": tenant})
        await ws.send(orjson.dumps({"subscribe": patterns}).decode())
        ack = orjson.loads(await ws.recv())
        assert ack["subscribed"] == patterns
        sub = Subscription(ws)
        subs.append(sub)
        return sub

    yield open_
    for s in subs:
        await s.close()

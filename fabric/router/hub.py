"""The change hub: one reader of the per-tenant change feeds, fanning out to subscribers.

One blocking ``XREAD`` covers the feed of every tenant that has a subscriber. A new
tenant's feed is read from the position it had when its first subscriber arrived,
so nothing between subscribing and the next read is lost. Each subscriber has a
bounded queue: when it is full the subscriber is marked lagging and the change is
dropped for it alone; the others never wait for it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgspec
import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from fabric.pipeline.materialize import CacheKeys
from fabric.router.contexts import freshness
from fabric.topics.registry import Registry

log = logging.getLogger(__name__)

PUSHED = Counter("fabric_push_messages_total", "Changes queued to subscribers")
DROPPED = Counter("fabric_push_dropped_total", "Changes dropped for lagging subscribers")
SUBSCRIBERS = Gauge("fabric_subscribers", "Open subscriptions")


class Push(msgspec.Struct):
    context_type: str
    type: str
    subject: str
    sequence: int
    as_of: str
    age_ms: int
    stale: bool
    resume: str
    event: msgspec.Raw


_enc = msgspec.json.Encoder()


def compile_patterns(patterns: list[str]) -> re.Pattern[str]:
    """Globs over event types (``page.*``) compiled into one regex."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


@dataclass(eq=False)
class Subscriber:
    """One subscription's bounded buffer: at most ``max_messages`` and ``max_bytes`` waiting."""

    tenant: str
    matcher: re.Pattern[str]
    max_messages: int = 1000
    max_bytes: int = 1 << 20
    pending: deque[bytes] = field(default_factory=deque)
    pending_bytes: int = 0
    dropped: int = 0
    lagging: bool = False
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, message: bytes) -> None:
        if len(self.pending) >= self.max_messages or self.pending_bytes + len(message) > self.max_bytes:
            self.dropped += 1
            self.lagging = True
            DROPPED.inc()
            return
        self.pending.append(message)
        self.pending_bytes += len(message)
        self._wake.set()

    async def next(self) -> bytes:
        """The oldest waiting message; waits for one."""
        while not self.pending:
            self._wake.clear()
            await self._wake.wait()
        message = self.pending.popleft()
        self.pending_bytes -= len(message)
        return message


@dataclass
class ChangeHub:
    redis: aioredis.Redis
    keys: CacheKeys
    registry: Registry
    buffer: int = 1000
    buffer_bytes: int = 1 << 20
    block_ms: int = 100
    tenants: dict[str, set[Subscriber]] = field(default_factory=dict)
    positions: dict[str, str] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._read_forever(), name="change-hub")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def subscribe(self, tenant: str, patterns: list[str]) -> Subscriber:
        sub = Subscriber(tenant, compile_patterns(patterns), self.buffer, self.buffer_bytes)
        stream = self.keys.changes(tenant)
        if tenant not in self.tenants:
            last: Any = await self.redis.xrevrange(stream, count=1)
            self.positions[stream] = last[0][0].decode() if last else "0-0"
            self.tenants[tenant] = set()
        self.tenants[tenant].add(sub)
        SUBSCRIBERS.inc()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self.tenants.get(sub.tenant)
        if subs and sub in subs:
            subs.discard(sub)
            SUBSCRIBERS.dec()
            if not subs:
                del self.tenants[sub.tenant]
                self.positions.pop(self.keys.changes(sub.tenant), None)

    async def _read_forever(self) -> None:
        while True:
            if not self.positions:
                await asyncio.sleep(self.block_ms / 1000)
                continue
            try:
                streams: Any = dict(self.positions)
                result: Any = await self.redis.xread(streams, count=2000, block=self.block_ms)
            except asyncio.CancelledError:
                raise
            except RedisError as e:
                log.warning("change hub: %s; retrying in 0.5 s", e)
                await asyncio.sleep(0.5)
                continue
            for stream, entries in result or ():
                name = stream.decode()
                if name not in self.positions:
                    continue  # the last subscriber of that tenant left meanwhile
                tenant = name.split("{", 1)[1].split("}", 1)[0]
                self._fan_out(tenant, entries)
                self.positions[name] = entries[-1][0].decode()

    def _fan_out(self, tenant: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        subs = self.tenants.get(tenant)
        if not subs:
            return
        for entry_id, f in entries:
            etype = f[b"type"].decode()
            targets = [s for s in subs if s.matcher.match(etype)]
            if not targets:
                continue
            ct = self.registry.context_types.get(f[b"ct"].decode())
            if ct is None:
                continue
            as_of, age, stale = freshness(int(f[b"at"]), ct)
            msg = _enc.encode(
                Push(ct.name, etype, f[b"subject"].decode(), int(f[b"seq"]), as_of, age, stale,
                     entry_id.decode(), msgspec.Raw(f[b"v"]))
            )  # fmt: skip
            for s in targets:
                s.offer(msg)
            PUSHED.inc(len(targets))

"""The change hub: one reader of the per-tenant change feeds, fanning out to subscribers.

One blocking ``XREAD`` covers the feed of every tenant that has a live subscriber (on
a Redis Cluster, one per slot: a command reads one slot there).
Each change is encoded once and offered to the subscribers whose patterns, scopes
and access rules let them see it.

Catching up: every push carries the feed entry id as its ``resume`` token. A
subscriber that comes back with one first reads the feed from there (``XRANGE``, at
the pace the client reads), then joins the live fan-out at exactly the position the
hub has read to, with no await in between, so the seam has neither gap nor duplicate.

Slow subscribers take the same road. Each has a bounded queue; a change that does not
fit is not dropped: the subscriber leaves the live fan-out, is told ``lagging``, and
catches up from the feed after the last change it was given, then rejoins. So a
subscriber gets every change, in order, however bursty the feed; the hub never waits
for anyone, and what waits for a slow reader is one queue and one cursor.

The feed keeps ``redis.change_retention`` changes per tenant, at most
``redis.change_retention_s`` old; a subscriber whose position is older than that gets
a ``gap`` notice and goes on from the oldest change kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson
import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge
from redis.crc import key_slot
from redis.exceptions import RedisError

from fabric.cache.keys import CacheKeys
from fabric.contract import Update
from fabric.errors import FabricError
from fabric.events.catalogue import Catalogue
from fabric.events.envelope import LEVELS
from fabric.pipeline.quality import served_quality
from fabric.router.freshness import freshness
from fabric.security.tokens import Principal

log = logging.getLogger(__name__)

PUSHED = Counter("fabric_push_messages_total", "Changes queued to subscribers")
FELL_BEHIND = Counter("fabric_push_fell_behind_total", "Times a subscriber left the live fan-out to catch up")
GAPS = Counter("fabric_push_gaps_total", "Subscribers told that changes were past the retention window")
SUBSCRIBERS = Gauge("fabric_subscribers", "Open subscriptions")


_enc = msgspec.json.Encoder()
ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")
CHUNK = 500  # feed entries read at a time while catching up


def entry_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def compile_patterns(patterns: list[str]) -> re.Pattern[str]:
    """Globs over event types (``page.*``) compiled into one regex."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


class SubscriberClosed(FabricError):
    """The hub gave up on a subscriber; the message says why."""


@dataclass(eq=False)
class Subscriber:
    """One subscription: what it may see, its bounded queue and its place in the feed."""

    who: Principal
    matcher: re.Pattern[str]
    #: (context type, sensitivity level) -> may see it; filled by the hub
    visible: dict[tuple[str, int], bool] = field(default_factory=dict)
    max_messages: int = 1000
    max_bytes: int = 1 << 20
    pending: deque[bytes] = field(default_factory=deque)
    pending_bytes: int = 0
    #: the feed entry of the last change queued (or the position it joined at)
    cursor: str = "0-0"
    #: times it fell behind the live fan-out and caught up from the feed
    fell_behind: int = 0
    closed: str | None = None
    delivered: int = 0
    #: reading the feed for it (resuming or fallen behind); cancelled when it leaves
    catching_up: asyncio.Task[None] | None = None
    left: bool = False
    _types: dict[str, bool] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def tenant(self) -> str:
        return self.who.tenant

    def wants(self, etype: str) -> bool:
        ok = self._types.get(etype)
        if ok is None:
            ok = self._types[etype] = self.matcher.match(etype) is not None
        return ok

    @property
    def full(self) -> bool:
        return len(self.pending) >= self.max_messages or self.pending_bytes >= self.max_bytes

    def offer(self, entry_id: str, message: bytes) -> bool:
        """Queue a change unless the queue is full; False means it was not taken."""
        if self.closed:
            return True
        if self.full:
            return False
        self._queue(message)
        self.cursor = entry_id
        return True

    def notice(self, message: bytes) -> None:
        """Queue a notice (lagging, gap); notices are few and never refused."""
        self._queue(message)

    def _queue(self, message: bytes) -> None:
        self.pending.append(message)
        self.pending_bytes += len(message)
        self._wake.set()

    def fail(self, error: BaseException | None) -> None:
        """Close the subscription because serving it failed (the reason goes to the client)."""
        self.closed = f"the subscription failed: {error}"
        self._wake.set()

    async def room(self) -> None:
        """Wait until the queue has room (catching up goes at the client's pace)."""
        while self.full and not self.closed:
            self._wake.clear()
            await self._wake.wait()

    async def next(self) -> bytes:
        """The oldest waiting message; waits for one. Raises SubscriberClosed."""
        return (await self.drain(1))[0]

    async def drain(self, limit: int) -> list[bytes]:
        """Every waiting message, oldest first, up to ``limit``; waits for one. Never waits for
        more than are there, so taking several adds no latency. Raises SubscriberClosed."""
        while True:
            if self.closed:
                raise SubscriberClosed(self.closed)
            if self.pending:
                n = min(limit, len(self.pending))
                messages = [self.pending.popleft() for _ in range(n)]
                self.pending_bytes -= sum(map(len, messages))
                self._wake.set()  # room for a catching-up reader
                self.delivered += n
                return messages
            self._wake.clear()
            await self._wake.wait()


@dataclass
class ChangeHub:
    redis: aioredis.Redis
    keys: CacheKeys
    catalogue: Catalogue
    #: (subscriber, context type, level) -> may the subscriber see it
    visible: Any = None
    buffer: int = 1000
    buffer_bytes: int = 1 << 20
    block_ms: int = 100
    #: tenant -> its subscribers in the live fan-out
    tenants: dict[str, set[Subscriber]] = field(default_factory=dict)
    #: feed -> the entry the live fan-out has read to
    positions: dict[str, str] = field(default_factory=dict)
    #: on a Redis Cluster one XREAD reads one slot, so each slot gets its own reader
    cluster: bool = False
    _readers: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    _slots: dict[str, int] = field(default_factory=dict)

    async def stop(self) -> None:
        readers = list(self._readers.values())
        for t in readers:
            t.cancel()
        for t in readers:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    def _lane(self, stream: str) -> int:
        if not self.cluster:
            return 0
        slot = self._slots.get(stream)
        if slot is None:
            if len(self._slots) > 100_000:
                self._slots.clear()
            slot = self._slots[stream] = key_slot(stream.encode())
        return slot

    def _read_from(self, stream: str, at: str) -> None:
        """Start the live fan-out of a feed at ``at`` (a reader for its lane if none runs)."""
        self.positions[stream] = at
        lane = self._lane(stream)
        if lane not in self._readers:
            self._readers[lane] = asyncio.create_task(self._read_lane(lane), name=f"change-hub-{lane}")

    def subscriber(self, who: Principal, patterns: list[str]) -> Subscriber:
        return Subscriber(who, compile_patterns(patterns), max_messages=self.buffer, max_bytes=self.buffer_bytes)

    async def join(self, sub: Subscriber) -> None:
        """Live changes from now on."""
        SUBSCRIBERS.inc()
        stream = self.keys.changes(sub.tenant)
        if stream not in self.positions:
            last: Any = await self.redis.xrevrange(stream, count=1)
            if stream not in self.positions:  # nobody else started reading it meanwhile
                self._read_from(stream, last[0][0].decode() if last else "0-0")
        self._go_live(sub, self.positions[stream])

    async def resume(self, sub: Subscriber, token: str) -> None:
        """Every change after ``token``, at the pace the subscriber reads them, then the live
        ones. Returns at once; the catching up runs in the background until the subscriber
        joins the live fan-out or leaves."""
        SUBSCRIBERS.inc()
        stream = self.keys.changes(sub.tenant)
        try:
            info: Any = await self.redis.xinfo_stream(stream)
        except RedisError:
            token = "0-0"  # no feed yet: nothing was missed (and no token can be ahead of it)
        else:
            end = _text(info.get("last-generated-id") or "0-0")
            if entry_key(token) > entry_key(end):
                # Not a token this feed gave out (forged, or from before the cache was reset).
                # Starting there would start the tenant's shared reader past every future
                # change, so the subscriber gets what the feed holds instead.
                sub.notice(orjson.dumps({"gap": f"resume token {token} is past the end of the feed ({end}); "
                                                "sending the changes it holds"}))  # fmt: skip
                GAPS.inc()
                token = "0-0"
        self._catch_up(sub, token)

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub.left:
            return
        sub.left = True
        SUBSCRIBERS.dec()
        if sub.catching_up is not None:
            sub.catching_up.cancel()
        self._leave_live(sub)

    def _go_live(self, sub: Subscriber, at: str) -> None:
        sub.cursor = at
        self.tenants.setdefault(sub.tenant, set()).add(sub)

    def _leave_live(self, sub: Subscriber) -> None:
        subs = self.tenants.get(sub.tenant)
        if subs is not None and sub in subs:
            subs.discard(sub)
            if not subs:  # nobody of that tenant left to read for
                del self.tenants[sub.tenant]
                self.positions.pop(self.keys.changes(sub.tenant), None)

    def _fall_behind(self, sub: Subscriber) -> None:
        """A change did not fit in the subscriber's queue: it reads the feed at its own pace."""
        self._leave_live(sub)
        sub.fell_behind += 1
        FELL_BEHIND.inc()
        sub.notice(orjson.dumps({"lagging": True, "after": sub.cursor}))
        self._catch_up(sub, sub.cursor)

    def _catch_up(self, sub: Subscriber, after: str) -> None:
        def failed(t: asyncio.Task[None]) -> None:
            if not t.cancelled() and t.exception() is not None:
                sub.fail(t.exception())

        sub.catching_up = asyncio.create_task(self._read_for(sub, after), name="change-hub-catch-up")
        sub.catching_up.add_done_callback(failed)

    async def _read_for(self, sub: Subscriber, last: str) -> None:
        """Feed entries after ``last`` to one subscriber, waiting for it as it goes, until it
        reaches where the live fan-out is; then it joins that, with no await in between."""
        stream = self.keys.changes(sub.tenant)
        while not (sub.closed or sub.left):
            target = self.positions.get(stream)
            if target is not None and entry_key(last) >= entry_key(target):
                self._go_live(sub, last)
                return
            async with self.redis.pipeline(transaction=False) as p:
                p.xrange(stream, count=1)
                p.xrange(stream, f"({last}", target or "+", count=CHUNK)
                oldest, entries = await p.execute()
            if oldest and last != "0-0" and entry_key(oldest[0][0].decode()) > entry_key(last):
                # the entry after ``last`` may be gone (a kept entry would be <= last)
                GAPS.inc()
                sub.notice(orjson.dumps({"gap": f"changes after {last} before {oldest[0][0].decode()} are "
                                                "past the retention window and may be lost"}))  # fmt: skip
            if not entries:
                if target is None and stream not in self.positions:
                    # nobody reads this tenant live yet: start the hub where this one is
                    self._read_from(stream, last)
                    self._go_live(sub, last)
                    return
                if target is not None:
                    last = target  # the rest was trimmed meanwhile
                continue
            for entry_id, f in entries:
                await sub.room()
                if sub.closed or sub.left:
                    return
                self._fan_out(entry_id, f, (sub,))
                last = entry_id.decode()

    async def _read_lane(self, lane: int) -> None:
        """One blocking XREAD over the feeds of a lane (every feed, on one Redis node),
        fanning out what it returns; ends when the lane has no feed left to read."""
        while True:
            streams: Any = {s: p for s, p in self.positions.items() if self._lane(s) == lane}
            if not streams:
                del self._readers[lane]
                return
            try:
                result: Any = await self.redis.xread(streams, count=2000, block=self.block_ms)
            except asyncio.CancelledError:
                raise
            except RedisError as e:
                log.warning("change hub: %s; retrying in 0.5 s", e)
                await asyncio.sleep(0.5)
                continue
            for stream, entries in result or ():
                name = stream.decode()
                if self.positions.get(name) != streams[name]:
                    continue  # the tenant's last subscriber left meanwhile (maybe another came back)
                tenant = name.split("{", 1)[1].split("}", 1)[0]
                for entry_id, f in entries:
                    subs = self.tenants.get(tenant)
                    if not subs:
                        break
                    self._fan_out(entry_id, f, subs)
                if name in self.positions:  # (its last live subscriber may have fallen behind)
                    self.positions[name] = entries[-1][0].decode()

    def _fan_out(self, entry_id: bytes, f: dict[bytes, bytes], subs: Iterable[Subscriber]) -> None:
        """Offer one feed entry, encoded once, to the subscribers that may see it."""
        etype, ct_name, level = f[b"type"].decode(), f[b"ct"].decode(), int(f.get(b"sens") or 1)
        targets = [s for s in subs if s.wants(etype) and self._visible(s, ct_name, level)]
        ct = self.catalogue.context_types.get(ct_name)
        if not targets or ct is None:
            return
        subject = f[b"subject"].decode()
        eid = entry_id.decode()
        as_of, age, stale = freshness(int(f[b"at"]), ct)
        msg = _enc.encode(
            Update(
                ct.name,
                etype,
                subject,
                int(f[b"seq"]),
                as_of,
                age,
                stale,
                LEVELS[level],
                eid,
                msgspec.Raw(f[b"v"]),
                served_quality(float(q) if (q := f.get(b"q")) else None, age, ct),
            )
        )
        for s in targets:
            if not s.offer(eid, msg):
                self._fall_behind(s)
        PUSHED.inc(len(targets))

    def _visible(self, sub: Subscriber, ct: str, level: int) -> bool:
        ok = sub.visible.get((ct, level))
        if ok is None:
            ok = sub.visible[ct, level] = self.visible(sub.who, ct, level) if self.visible else True
        return ok

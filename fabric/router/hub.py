"""The change hub: one reader of the per-tenant change feeds, fanning out to subscribers.

One blocking ``XREAD`` covers the feed of every tenant that has a live subscriber.
Each change is encoded once and offered to the subscribers whose patterns, scopes
and access rules let them see it.

Resuming: every push carries the feed entry id as its ``resume`` token. A subscriber
that comes back with one first reads the feed from there (``XRANGE``, waiting for
the client as it goes), then joins the live fan-out at exactly the position the hub
has read to, with no await in between, so the seam has neither gap nor duplicate.
The feed keeps ``redis.change_retention`` changes per tenant, at most
``redis.change_retention_s`` old; a token older than that gets a ``gap`` notice.

Slow subscribers: each has a bounded queue. When it overflows the subscriber turns
lagging: its waiting changes are coalesced to the latest per subject (a reader who
is behind wants the current state, not every step) and it is told so. Past
``subscriber_hard_limit`` subjects waiting it is disconnected with the reason. The
hub never waits for a subscriber, so the others are unaffected.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson
import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from fabric.contract import Update
from fabric.pipeline.materialize import CacheKeys
from fabric.router.contexts import freshness
from fabric.security.tokens import Principal
from fabric.topics.envelope import LEVELS
from fabric.topics.registry import Registry

log = logging.getLogger(__name__)

PUSHED = Counter("fabric_push_messages_total", "Changes queued to subscribers")
COALESCED = Counter("fabric_push_coalesced_total", "Changes replaced by a newer one for a lagging subscriber")
DISCONNECTED = Counter("fabric_push_disconnected_total", "Subscribers disconnected for falling too far behind")
SUBSCRIBERS = Gauge("fabric_subscribers", "Open subscriptions")


_enc = msgspec.json.Encoder()
ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")


def entry_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def compile_patterns(patterns: list[str]) -> re.Pattern[str]:
    """Globs over event types (``page.*``) compiled into one regex."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


class SubscriberClosed(Exception):
    """The hub gave up on a subscriber; the message says why."""


@dataclass(eq=False)
class Subscriber:
    """One subscription: what it may see, and its bounded buffer."""

    who: Principal
    matcher: re.Pattern[str]
    #: (context type, sensitivity level) -> may see it; filled by the hub
    visible: dict[tuple[str, int], bool] = field(default_factory=dict)
    max_messages: int = 1000
    max_bytes: int = 1 << 20
    hard_limit: int = 10_000
    pending: deque[tuple[tuple[str, str], bytes]] = field(default_factory=deque)
    pending_bytes: int = 0
    #: while lagging: subject -> its latest change, oldest first
    coalesced: OrderedDict[tuple[str, str], bytes] | None = None
    replaced: int = 0
    lagging: bool = False
    closed: str | None = None
    delivered: int = 0
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

    def offer(self, key: tuple[str, str], message: bytes) -> None:
        if self.closed:
            return
        if self.coalesced is None:
            if not self.full:
                self.pending.append((key, message))
                self.pending_bytes += len(message)
                self._wake.set()
                return
            self.lagging = True
            self.coalesced = OrderedDict()
            while self.pending:
                self._coalesce(*self.pending.popleft())
            self.pending_bytes = 0
        self._coalesce(key, message)
        if len(self.coalesced) > self.hard_limit:
            self.closed = f"too far behind: more than {self.hard_limit} subjects with changes waiting"
            self.coalesced.clear()
            DISCONNECTED.inc()
        self._wake.set()

    def _coalesce(self, key: tuple[str, str], message: bytes) -> None:
        assert self.coalesced is not None
        if key in self.coalesced:
            self.replaced += 1
            COALESCED.inc()
            self.coalesced.move_to_end(key)
        self.coalesced[key] = message

    def fail(self, error: BaseException | None) -> None:
        """Close the subscription because serving it failed (the reason goes to the client)."""
        self.closed = f"the subscription failed: {error}"
        self._wake.set()

    async def room(self) -> None:
        """Wait until the buffer has room (catching up goes at the client's pace)."""
        while self.full and not self.closed:
            self._wake.clear()
            await self._wake.wait()

    async def next(self) -> bytes:
        """The oldest waiting message; waits for one. Raises SubscriberClosed."""
        while True:
            if self.closed:
                raise SubscriberClosed(self.closed)
            if self.pending:
                _, message = self.pending.popleft()
                self.pending_bytes -= len(message)
                self._wake.set()  # room for a catching-up reader
                self.delivered += 1
                return message
            if self.coalesced:
                _, message = self.coalesced.popitem(last=False)
                if not self.coalesced:
                    self.coalesced = None  # caught up: back to the plain queue
                self.delivered += 1
                return message
            self.coalesced = None
            self._wake.clear()
            await self._wake.wait()


@dataclass
class ChangeHub:
    redis: aioredis.Redis
    keys: CacheKeys
    registry: Registry
    #: (subscriber, context type, level) -> may the subscriber see it
    visible: Any = None
    buffer: int = 1000
    buffer_bytes: int = 1 << 20
    hard_limit: int = 10_000
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

    def subscriber(self, who: Principal, patterns: list[str]) -> Subscriber:
        return Subscriber(
            who, compile_patterns(patterns), max_messages=self.buffer, max_bytes=self.buffer_bytes,
            hard_limit=self.hard_limit,
        )  # fmt: skip

    async def join(self, sub: Subscriber) -> None:
        """Live changes from now on."""
        stream = self.keys.changes(sub.tenant)
        if sub.tenant not in self.tenants:
            last: Any = await self.redis.xrevrange(stream, count=1)
            if sub.tenant not in self.tenants:  # nobody else started reading it meanwhile
                self.positions[stream] = last[0][0].decode() if last else "0-0"
                self.tenants[sub.tenant] = set()
        self._add(sub)

    def _add(self, sub: Subscriber) -> None:
        self.tenants.setdefault(sub.tenant, set()).add(sub)
        SUBSCRIBERS.inc()

    async def resume(self, sub: Subscriber, token: str) -> None:
        """Queue every change after ``token``, at the pace the subscriber reads them, then join
        the live fan-out. When changes after the token are no longer kept, a ``gap`` notice
        goes first (the client should re-pull what it cares about)."""
        stream = self.keys.changes(sub.tenant)
        gap = None
        try:
            info: Any = await self.redis.xinfo_stream(stream)
        except RedisError:
            token = "0-0"  # no feed yet: nothing was missed (and no token can be ahead of it)
        else:
            # The token's own entry already trimmed: changes right after it may have gone too
            # (Redis 7.0's XTRIM leaves max-deleted-entry-id alone, so this is the sure test).
            first = _text(info.get("recorded-first-entry-id") or (info.get("first-entry") or [b"0-0"])[0])
            end = _text(info.get("last-generated-id") or "0-0")
            if entry_key(token) > entry_key(end):
                # Not a token this feed gave out (forged, or from before the cache was reset).
                # Starting there would start the tenant's shared reader past every future
                # change, so the subscriber gets what the feed holds instead.
                gap = f"resume token {token} is past the end of the feed ({end}); sending the changes it holds"
                token = "0-0"
            elif entry_key(token) < entry_key(first):
                gap = f"changes after {token} before {first} are past the retention window and may be lost"
        if gap:
            sub.offer(("", ""), orjson.dumps({"gap": gap}))
        last = token
        while True:
            target = self.positions.get(stream)
            if target is not None and entry_key(last) >= entry_key(target):
                self._add(sub)
                return
            entries: Any = await self.redis.xrange(stream, f"({last}", target or "+", count=500)
            if not entries:
                if target is None and stream not in self.positions:
                    # nobody reads this tenant yet: start the hub at what we have read
                    self.positions[stream] = last
                    self._add(sub)
                    return
                if target is not None:
                    last = target  # the rest was trimmed meanwhile
                continue
            for entry_id, f in entries:
                await sub.room()
                if sub.closed:
                    return
                self._fan_out(entry_id, f, (sub,))
                last = entry_id.decode()

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
                subs = self.tenants.get(tenant)
                if subs:
                    for entry_id, f in entries:
                        self._fan_out(entry_id, f, subs)
                self.positions[name] = entries[-1][0].decode()

    def _fan_out(self, entry_id: bytes, f: dict[bytes, bytes], subs: Iterable[Subscriber]) -> None:
        """Offer one feed entry, encoded once, to the subscribers that may see it."""
        etype, ct_name, level = f[b"type"].decode(), f[b"ct"].decode(), int(f.get(b"sens") or 1)
        targets = [s for s in subs if s.wants(etype) and self._visible(s, ct_name, level)]
        ct = self.registry.context_types.get(ct_name)
        if not targets or ct is None:
            return
        subject = f[b"subject"].decode()
        as_of, age, stale = freshness(int(f[b"at"]), ct)
        msg = _enc.encode(
            Update(ct.name, etype, subject, int(f[b"seq"]), as_of, age, stale, LEVELS[level],
                   entry_id.decode(), msgspec.Raw(f[b"v"]))
        )  # fmt: skip
        for s in targets:
            s.offer((ct.name, subject), msg)
        PUSHED.inc(len(targets))

    def _visible(self, sub: Subscriber, ct: str, level: int) -> bool:
        ok = sub.visible.get((ct, level))
        if ok is None:
            ok = sub.visible[ct, level] = self.visible(sub.who, ct, level) if self.visible else True
        return ok

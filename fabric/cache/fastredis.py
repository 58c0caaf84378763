"""A small auto-pipelining Redis client for the router's hot path.

Every command issued during one event-loop turn leaves in a single write, and replies
are parsed by hiredis as they arrive; with many concurrent pulls this turns N round
trips and N syscalls into one. Only what the pull path needs: one connection per
router process (per master on a Redis Cluster), reconnecting on the next command
after a failure.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol
from urllib.parse import urlparse

import hiredis
from redis.crc import key_slot

from fabric.errors import BackendUnavailable


class RedisUnavailable(BackendUnavailable, ConnectionError):
    """Redis did not answer; the caller answers 503."""


def encode(args: tuple[bytes | str | int, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=hiredis.ReplyError)
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.sent_at: deque[float] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            fut = self.waiting.popleft()
            self.sent_at.popleft()
            if fut.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.sent_at.clear()
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(RedisUnavailable(f"connection to Redis lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)


class FastRedis:
    def __init__(self, url: str, timeout: float = 2.0) -> None:
        u = urlparse(url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 6379
        self.db = int(u.path.lstrip("/") or 0)
        self.password = u.password
        self.timeout = timeout
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.Task[None] | None = None

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._proto is not None and self._proto.transport is not None:
                return self._proto
            loop = asyncio.get_running_loop()
            try:
                _, proto = await asyncio.wait_for(loop.create_connection(_Protocol, self.host, self.port), self.timeout)
            except (OSError, TimeoutError) as e:
                raise RedisUnavailable(f"cannot connect to Redis at {self.host}:{self.port}: {e}") from e
            self._proto = proto
            setup: list[tuple[bytes | str | int, ...]] = []
            if self.password:
                setup.append(("AUTH", self.password))
            if self.db:
                setup.append(("SELECT", self.db))
            for cmd in setup:
                await self._send(proto, cmd)
            return proto

    def _flush(self) -> None:
        self._flush_scheduled = False
        proto = self._proto
        if proto is not None and proto.transport is not None and self._out:
            proto.transport.write(b"".join(self._out))
        self._out.clear()  # lost with the connection otherwise: their futures fail there

    def _send(self, proto: _Protocol, args: tuple[bytes | str | int, ...]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        proto.waiting.append(fut)
        proto.sent_at.append(loop.time())
        self._out.append(encode(args))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return fut

    async def _ready(self) -> _Protocol:
        proto = self._proto
        if proto is None or proto.transport is None:
            proto = await self._connect()
            self._watchdog = asyncio.get_running_loop().create_task(self._watch(proto))
        return proto

    async def _watch(self, proto: _Protocol) -> None:
        """Fail everything waiting when the oldest command waited longer than the timeout."""
        loop = asyncio.get_running_loop()
        while proto.transport is not None:
            await asyncio.sleep(self.timeout / 4)
            if proto.sent_at and loop.time() - proto.sent_at[0] > self.timeout and proto.transport is not None:
                proto.transport.abort()

    async def execute(self, *args: bytes | str | int) -> Any:
        proto = await self._ready()
        return await self._send(proto, args)

    async def many(self, *commands: tuple[bytes | str | int, ...]) -> list[Any]:
        """Several commands in one write; their replies in order."""
        proto = await self._ready()
        futures = [self._send(proto, c) for c in commands]
        return [await f for f in futures]

    async def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
            await self._proto.closed


#: commands whose first key is not the first argument (``EVALSHA sha numkeys key ...``)
_KEY_AT = {"EVALSHA": 3, "EVAL": 3}
#: commands without a key: sent to every node
_EVERYWHERE = {"SCRIPT"}


def _key(args: tuple[bytes | str | int, ...]) -> bytes | None:
    name = str(args[0]).upper() if not isinstance(args[0], bytes) else args[0].decode().upper()
    if name in _EVERYWHERE:
        return None
    k = args[_KEY_AT.get(name, 1)]
    return k if isinstance(k, bytes) else str(k).encode()


class FastCluster:
    """The same client over a Redis Cluster: one ``FastRedis`` per master, each command
    sent to the master of its key's slot. The slot map comes from ``CLUSTER SLOTS`` of
    any node and is read again when a node answers ``MOVED`` (a failover or resharding);
    the commands are then sent once more."""

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.seed = FastRedis(url, timeout)
        self.timeout = timeout
        self.password = self.seed.password
        self.nodes: dict[tuple[str, int], FastRedis] = {(self.seed.host, self.seed.port): self.seed}
        self.slots: list[FastRedis] = []

    def _node(self, host: str, port: int) -> FastRedis:
        node = self.nodes.get((host, port))
        if node is None:
            auth = f":{self.password}@" if self.password else ""
            node = self.nodes[host, port] = FastRedis(f"redis://{auth}{host}:{port}/0", self.timeout)
        return node

    async def _refresh(self) -> None:
        error: Exception | None = None
        for node in list(self.nodes.values()):
            try:
                ranges = await node.execute("CLUSTER", "SLOTS")
            except (RedisUnavailable, hiredis.ReplyError) as e:
                error = e
                continue
            slots: list[FastRedis | None] = [None] * 16384
            for start, end, master, *_ in ranges:
                owner = self._node(master[0].decode(), int(master[1]))
                slots[start : end + 1] = [owner] * (end - start + 1)
            if any(s is None for s in slots):
                raise RedisUnavailable("the Redis Cluster does not cover every slot")
            self.slots = slots  # type: ignore[assignment]
            return
        raise RedisUnavailable(f"no node of the Redis Cluster answered: {error}")

    async def execute(self, *args: bytes | str | int) -> Any:
        return (await self.many(args))[0]

    async def many(self, *commands: tuple[bytes | str | int, ...]) -> list[Any]:
        """The commands, each to its slot's master (one write per node); replies in order."""
        try:
            return await self._many(commands)
        except hiredis.ReplyError as e:
            if not str(e).startswith(("MOVED", "ASK", "CLUSTERDOWN")):
                raise
            await self._refresh()
            return await self._many(commands)

    async def _many(self, commands: tuple[tuple[bytes | str | int, ...], ...]) -> list[Any]:
        if not self.slots:
            await self._refresh()
        groups: dict[FastRedis, list[int]] = {}
        everywhere: list[int] = []
        for i, c in enumerate(commands):
            k = _key(c)
            if k is None:
                everywhere.append(i)
            else:
                groups.setdefault(self.slots[key_slot(k)], []).append(i)
        for i in everywhere:
            for node in set(self.slots):
                groups.setdefault(node, []).append(i)
        replies: list[Any] = [None] * len(commands)
        answers = await asyncio.gather(*(node.many(*(commands[i] for i in idx)) for node, idx in groups.items()))
        for idx, got in zip(groups.values(), answers, strict=True):
            for i, reply in zip(idx, got, strict=True):
                replies[i] = reply
        return replies

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.close()


class Pipelined(Protocol):
    """What the hot path needs of a Redis client: ``FastRedis`` or ``FastCluster``."""

    async def execute(self, *args: bytes | str | int) -> Any: ...

    async def many(self, *commands: tuple[bytes | str | int, ...]) -> list[Any]: ...

    async def close(self) -> None: ...

"""An open-loop load generator: requests leave on a fixed schedule, whatever the server does.

Each request's latency is measured from the moment the schedule says it should have
been sent, not from when a connection was free, so a server that stalls is charged
for every request that queued behind the stall (no coordinated omission). Requests
are pipelined on keep-alive connections (HTTP/1.1, or RESP for Redis), so a
connection never waits for an answer before the next scheduled send.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.hist import histogram, record, summary


def http_framer(buf: bytearray) -> int:
    """Length of the first complete HTTP/1.1 response in ``buf`` (0: incomplete), negative if an error status."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return 0
    head = bytes(buf[:end]).lower()
    i = head.find(b"content-length:")
    length = int(head[i + 15 : head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None]) if i >= 0 else 0
    total = end + 4 + length
    if len(buf) < total:
        return 0
    status = int(head[9:12])
    return total if status < 400 else -total


def resp_framer(buf: bytearray) -> int:
    """Length of the first complete RESP bulk-string reply in ``buf`` (0: incomplete)."""
    end = buf.find(b"\r\n")
    if end < 0:
        return 0
    if buf[0:1] != b"$":
        return -(end + 2)
    n = int(buf[1:end])
    if n < 0:
        return -(end + 2)
    total = end + 2 + n + 2
    return total if len(buf) >= total else 0


class Conn(asyncio.Protocol):
    def __init__(self, run: Run, framer: Callable[[bytearray], int]) -> None:
        self.run = run
        self.framer = framer
        self.buf = bytearray()
        self.sent: deque[float] = deque()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            n = self.framer(self.buf)
            if n == 0:
                return
            del self.buf[: abs(n)]
            self.run.done(self.sent.popleft(), ok=n > 0)

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.errors += len(self.sent)
        self.sent.clear()
        self.transport = None


@dataclass
class Run:
    rate: float
    seconds: float
    warmup: float
    hist: Any = field(default_factory=histogram)
    per_second: list[int] = field(default_factory=list)
    completed: int = 0
    answered: int = 0
    errors: int = 0
    issued: int = 0
    started: float = 0.0

    def done(self, intended: float, ok: bool) -> None:
        now = time.perf_counter()
        self.answered += 1
        if intended >= self.started + self.warmup:
            if ok:
                record(self.hist, now - intended)
                self.completed += 1
                second = int(now - self.started - self.warmup)
                while len(self.per_second) <= second:
                    self.per_second.append(0)
                self.per_second[second] += 1
            else:
                self.errors += 1


async def drive(
    host: str,
    port: int,
    requests: Sequence[bytes],
    rate: float,
    seconds: float,
    *,
    framer: Callable[[bytearray], int] = http_framer,
    connections: int = 10,
    warmup: float = 1.0,
    max_outstanding: int = 20_000,
) -> dict[str, Any]:
    """Send ``requests`` (chosen at random) at ``rate`` per second for ``warmup + seconds``."""
    loop = asyncio.get_running_loop()
    run = Run(rate, seconds, warmup)
    conns = [(await loop.create_connection(lambda: Conn(run, framer), host, port))[1] for _ in range(connections)]
    rnd = random.Random(7)
    run.started = t0 = time.perf_counter()
    end = t0 + warmup + seconds
    interval = 1.0 / rate
    next_at = t0
    i = 0
    skipped = 0
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        while next_at <= now and next_at < end:
            conn = conns[i % connections]
            i += 1
            if conn.transport is None or run.issued - run.answered > max_outstanding:
                skipped += 1  # the server is hopelessly behind: count it, do not pile up forever
            else:
                conn.sent.append(next_at)
                conn.transport.write(requests[rnd.randrange(len(requests))])
                run.issued += 1
            next_at += interval
        await asyncio.sleep(max(0.0, min(next_at - time.perf_counter(), 0.001)))
    # let what is in flight finish (counted against its intended time)
    drain_until = time.perf_counter() + 5.0
    while any(c.sent for c in conns) and time.perf_counter() < drain_until:
        await asyncio.sleep(0.005)
    unanswered = sum(len(c.sent) for c in conns)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    out = summary(run.hist)
    out.update(
        offered_rate=rate,
        achieved_rate=round(run.completed / seconds, 1),
        errors=run.errors + unanswered + skipped,
        per_second=run.per_second[: int(seconds)],
    )
    return out


def http_get(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()


def http_post(host: str, port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body


def resp_get(key: str) -> bytes:
    k = key.encode()
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k)

"""A subscriber's bounded queue: every change in order within the bound, refused past it
(the hub then catches the subscriber up from the feed), notices never refused."""

from __future__ import annotations

import asyncio
import re

import pytest

from fabric.router.hub import Subscriber, SubscriberClosed, compile_patterns
from fabric.security.tokens import Principal


def sub(max_messages: int = 3) -> Subscriber:
    who = Principal("acme", "x", frozenset(), frozenset(), 1e12, "t")
    return Subscriber(who, re.compile(".*"), max_messages=max_messages)


async def drain(s: Subscriber) -> list[bytes]:
    out = []
    while s.pending:
        out.append(await s.next())
    return out


async def test_within_the_bound_every_change_arrives_in_order() -> None:
    s = sub()
    assert all(s.offer(f"1-{i}", f"m{i}".encode()) for i in range(3))
    assert s.cursor == "1-2"
    assert await drain(s) == [b"m0", b"m1", b"m2"]


async def test_past_the_bound_a_change_is_refused_and_the_cursor_stays_at_the_last_taken() -> None:
    s = sub(max_messages=2)
    assert s.offer("1-0", b"a") and s.offer("1-1", b"b")
    assert not s.offer("1-2", b"c")
    assert s.cursor == "1-1"  # where catching up from the feed starts
    s.notice(b'{"lagging":true}')  # notices are queued even when full
    assert await drain(s) == [b"a", b"b", b'{"lagging":true}']
    assert s.offer("1-2", b"c") and s.cursor == "1-2"


async def test_a_failed_subscription_raises_with_the_reason() -> None:
    s = sub()
    s.offer("1-0", b"a")
    s.fail(RuntimeError("redis went away"))
    with pytest.raises(SubscriberClosed, match="redis went away"):
        await s.next()


async def test_room_waits_for_the_reader() -> None:
    s = sub(max_messages=2)
    s.offer("1-0", b"1")
    s.offer("1-1", b"2")
    waiter = asyncio.create_task(s.room())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    assert await s.next() == b"1"
    await asyncio.wait_for(waiter, 1)


def test_patterns_are_globs_over_event_types() -> None:
    m = compile_patterns(["page.*", "log.entry"])
    assert m.match("page.updated") and m.match("log.entry") and not m.match("log.entryx") and not m.match("xpage.a")

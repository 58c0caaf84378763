"""A subscriber's bounded buffer: plain queue, coalescing when behind, disconnect past the bound."""

from __future__ import annotations

import asyncio
import re

import pytest

from fabric.router.hub import Subscriber, SubscriberClosed, compile_patterns
from fabric.security.tokens import Principal


def sub(max_messages: int = 3, hard_limit: int = 5) -> Subscriber:
    who = Principal("acme", "x", frozenset(), frozenset(), 1e12, "t")
    return Subscriber(who, re.compile(".*"), max_messages=max_messages, hard_limit=hard_limit)


async def drain(s: Subscriber) -> list[bytes]:
    out = []
    while s.pending or s.coalesced:
        out.append(await s.next())
    return out


async def test_within_the_bound_every_change_arrives_in_order() -> None:
    s = sub()
    for i in range(3):
        s.offer(("T", f"s{i}"), f"m{i}".encode())
    assert await drain(s) == [b"m0", b"m1", b"m2"] and not s.lagging


async def test_past_the_bound_changes_coalesce_to_the_latest_per_subject() -> None:
    s = sub(max_messages=3, hard_limit=10)
    for i in range(12):  # subjects a, b, c in turn
        s.offer(("T", "abc"[i % 3]), f"{'abc'[i % 3]}{i}".encode())
    assert s.lagging and s.replaced == 9
    assert await drain(s) == [b"a9", b"b10", b"c11"]
    assert s.delivered + s.replaced == 12
    s.offer(("T", "a"), b"a12")  # caught up: a plain queue again
    assert s.coalesced is None and await drain(s) == [b"a12"]


async def test_too_far_behind_is_disconnected_with_the_reason() -> None:
    s = sub(max_messages=2, hard_limit=5)
    for i in range(10):
        s.offer(("T", f"s{i}"), b"m")
    with pytest.raises(SubscriberClosed, match="too far behind"):
        await s.next()


async def test_room_waits_for_the_reader() -> None:
    s = sub(max_messages=2)
    s.offer(("T", "a"), b"1")
    s.offer(("T", "b"), b"2")
    waiter = asyncio.create_task(s.room())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    assert await s.next() == b"1"
    await asyncio.wait_for(waiter, 1)


def test_patterns_are_globs_over_event_types() -> None:
    m = compile_patterns(["page.*", "log.entry"])
    assert m.match("page.updated") and m.match("log.entry") and not m.match("log.entryx") and not m.match("xpage.a")

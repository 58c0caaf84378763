"""The one retry policy: retries what it is told to, logs each retry, stops when told."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fabric.retry import a_few_times, until_done


def test_until_done_retries_the_named_errors_until_it_works(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    async def run() -> None:
        async for attempt in until_done("thing", OSError, initial_s=0.001, max_s=0.002):
            with attempt:
                calls.append(1)
                if len(calls) < 3:
                    raise OSError("not yet")

    with caplog.at_level(logging.WARNING, "fabric.retry"):
        asyncio.run(run())
    assert len(calls) == 3
    assert [r.getMessage().split(";")[0] for r in caplog.records] == ["thing: not yet"] * 2


def test_other_errors_are_not_retried() -> None:
    async def run() -> None:
        async for attempt in until_done("thing", OSError, initial_s=0.001):
            with attempt:
                raise ValueError("a bug, not a transient failure")

    with pytest.raises(ValueError, match="a bug"):
        asyncio.run(run())


def test_until_done_ends_quietly_when_the_process_stops() -> None:
    calls = []

    async def run() -> None:
        async for attempt in until_done("thing", OSError, initial_s=0.001, stop=lambda: len(calls) >= 2):
            with attempt:
                calls.append(1)
                raise OSError("down")

    asyncio.run(run())
    assert len(calls) == 2


def test_a_few_times_gives_up_with_the_last_error() -> None:
    calls = []

    async def run() -> None:
        async for attempt in a_few_times("thing", OSError, 3, initial_s=0.001):
            with attempt:
                calls.append(1)
                raise OSError(f"down {len(calls)}")

    with pytest.raises(OSError, match="down 3"):
        asyncio.run(run())

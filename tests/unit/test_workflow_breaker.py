"""Circuit breakers (closed -> open after N failures -> half-open probe) and retry delays."""

from __future__ import annotations

import random

import pytest

from fabric.workflows.breaker import Breakers, CircuitBreaker, CircuitOpen, State, backoff_ms


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_n_failures_in_a_row_and_fails_fast() -> None:
    clock = Clock()
    b = CircuitBreaker(3, 10_000, clock)
    b.failed()
    b.failed()
    b.succeeded()  # a success resets the count
    b.failed()
    b.failed()
    assert b.state is State.CLOSED and b.allow()
    b.failed()
    assert b.state is State.OPEN and not b.allow()
    with pytest.raises(
        CircuitOpen, match=r"the circuit to erp is open \(3 failures in a row\); tried again in 10\.0 s"
    ):
        b.check("erp")


def test_half_open_lets_one_probe_through_then_closes_or_opens_again() -> None:
    clock = Clock()
    b = CircuitBreaker(2, 5_000, clock)
    b.failed()
    b.failed()
    clock.t += 4.9
    assert not b.allow()
    clock.t += 0.2
    assert b.state is State.HALF_OPEN
    assert b.allow() and not b.allow()  # one probe at a time
    b.failed()  # the probe failed: open for another period
    assert b.state is State.OPEN and not b.allow()
    clock.t += 5.0
    assert b.allow()
    b.succeeded()
    assert b.state is State.CLOSED and b.allow() and b.allow()


def test_breakers_are_per_system_and_list_the_open_ones() -> None:
    clock = Clock()
    breakers = Breakers(clock)
    erp = breakers.of("erp", 1, 1_000)
    assert breakers.of("erp", 1, 1_000) is erp
    erp.failed()
    assert breakers.open() == ["erp"]
    assert breakers.of("crm", 1, 1_000).allow()
    clock.t += 1.0
    assert breakers.open() == ["erp"]  # half-open is not closed yet
    erp.allow()
    erp.succeeded()
    assert breakers.open() == []


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(0, 1000)


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    rnd = random.Random(7)
    for attempt, full in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (40, 1000)]:
        waits = {backoff_ms(attempt, 100, 1000, rnd) for _ in range(200)}
        assert min(waits) >= full // 2 and max(waits) <= full
        assert len(waits) > 10  # jitter
    with pytest.raises(ValueError):
        backoff_ms(0, 100, 1000)

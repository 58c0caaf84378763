"""Circuit breakers per target system, and the delays between a step's attempts.

A breaker is closed while calls succeed. After ``failures`` failures in a row it opens:
calls to that system fail at once (``CircuitOpen``) instead of waiting for a timeout,
for every workflow. Once ``reset_after_ms`` has passed it is half-open: one call (the
probe) goes through; success closes it, failure opens it again for another period."""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable

from fabric.errors import FabricError


class CircuitOpen(FabricError):
    """The target system's circuit is open: the call was not made."""


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, failures: int, reset_after_ms: int, clock: Callable[[], float] = time.monotonic) -> None:
        if failures < 1 or reset_after_ms < 0:
            raise ValueError("a breaker needs failures >= 1 and reset_after_ms >= 0")
        self.failures = failures
        self.reset_after_s = reset_after_ms / 1000
        self._clock = clock
        self._state = State.CLOSED
        self._in_a_row = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> State:
        if self._state is State.OPEN and self._clock() - self._opened_at >= self.reset_after_s:
            self._state, self._probing = State.HALF_OPEN, False
        return self._state

    def allow(self) -> bool:
        """Whether a call may go now (in half-open, only the one probe)."""
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def check(self, system: str) -> None:
        """``allow``, or CircuitOpen naming the system and when it is tried again."""
        if not self.allow():
            left = max(0.0, self.reset_after_s - (self._clock() - self._opened_at))
            raise CircuitOpen(f"the circuit to {system} is open ({self._in_a_row} failures in a row); "
                              f"tried again in {left:.1f} s")  # fmt: skip

    def succeeded(self) -> None:
        self._state, self._in_a_row, self._probing = State.CLOSED, 0, False

    def failed(self) -> None:
        self._in_a_row += 1
        if self._state is State.HALF_OPEN or self._in_a_row >= self.failures:
            self._state, self._opened_at, self._probing = State.OPEN, self._clock(), False


class Breakers:
    """One breaker per target system, shared by every workflow run in the process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._by_system: dict[str, CircuitBreaker] = {}

    def of(self, system: str, failures: int, reset_after_ms: int) -> CircuitBreaker:
        b = self._by_system.get(system)
        if b is None or (b.failures, b.reset_after_s) != (failures, reset_after_ms / 1000):
            b = self._by_system[system] = CircuitBreaker(failures, reset_after_ms, self._clock)
        return b

    def open(self) -> list[str]:
        """The systems whose circuit is open now (half-open counts as open)."""
        return sorted(s for s, b in self._by_system.items() if b.state is not State.CLOSED)


def backoff_ms(attempt: int, base_ms: int, cap_ms: int, rnd: random.Random | None = None) -> int:
    """The wait before attempt ``attempt + 1`` (after ``attempt`` failures, from 1): exponential,
    capped, with half of it random (so retries of many runs do not arrive together)."""
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    full: int = min(cap_ms, base_ms * 2 ** min(attempt - 1, 30))
    draw: float = (rnd or random).random()
    return full // 2 + int(draw * (full - full // 2))

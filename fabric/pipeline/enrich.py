"""Enrich: stamp what the producer could not know (received time, provider, trace, type)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import msgspec

from fabric.events.catalogue import ContextType
from fabric.events.codecs import micros
from fabric.events.envelope import Envelope


def new_traceparent() -> str:
    """A fresh W3C traceparent: version 00, random trace and span ids, sampled."""
    # random, not secret: W3C asks ids to be unique, and a syscall per event is costly
    return f"00-{_rand(128) or 1:032x}-{_rand(64) or 1:016x}-01"


_rand = random.getrandbits


class Enricher:
    """Stamps events; remembers the last automatic sequence so it never repeats."""

    def __init__(self) -> None:
        self._last_auto = 0

    def __call__(self, env: Envelope, ct: ContextType, provider: str | None, now: datetime | None = None) -> Envelope:
        """Return the envelope with received time, provider, trace id, context type, sequence.

        An event without ``time`` takes its received time. One without ``sequence``
        takes its event time in microseconds (strictly increasing for events that had
        no time either), so "latest wins" still holds for providers that send neither.
        """
        now = now or datetime.now(UTC)
        sequence = env.sequence
        if sequence is None:
            sequence = micros(env.time or now)
            if env.time is None:
                sequence = max(sequence, self._last_auto + 1)
                self._last_auto = sequence
        return msgspec.structs.replace(
            env,
            time=env.time or now,
            receivedtime=now,
            provider=env.provider or provider or env.source,
            traceparent=env.traceparent or new_traceparent(),
            contexttype=ct.name,
            sequence=sequence,
        )

"""Compacted topics (``<prefix>.registry``, ``<prefix>.cep-checkpoints``), read and written
in one place.

- ``read_compacted``: the last value per key, read to the end now.
- ``Follower``: read to the end, then keep applying new records with the same consumer,
  so nothing written between the read and the follow is missed. Every process that
  caches what the registry topic holds (schemas, routing, manifests, policies,
  patterns) follows it with one of these, keeping the keys it cares about (``prefix``).
- ``publish``: a few keyed records (None: a tombstone), acknowledged before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from fabric import kafka
from fabric.kafka.topics import ensure_topics, partitions_of
from fabric.settings import Settings

log = logging.getLogger(__name__)

Apply = Callable[[str, bytes | None], None]


async def _read_to_end(c: AIOKafkaConsumer, parts: list[TopicPartition], apply: Apply) -> None:
    ends = await c.end_offsets(parts)
    # only partitions with records: asking a just-created empty partition for its
    # position can wait ~30 s for its leader (seen on Apache Kafka over SASL_SSL)
    waiting = [tp for tp in parts if ends[tp] > 0]
    while [tp for tp in waiting if await c.position(tp) < ends[tp]]:
        for recs in (await c.getmany(*waiting, timeout_ms=500)).values():
            for r in recs:
                apply((r.key or b"").decode(), r.value or None)


async def read_compacted(s: Settings, topic: str) -> dict[str, bytes | None]:
    """A compacted topic read to its end: the last value per key (None: removed)."""
    out: dict[str, bytes | None] = {}
    c = kafka.consumer(s)
    await kafka.start(s, c)
    try:
        parts = await partitions_of(c, topic)
        c.assign(parts)
        await c.seek_to_beginning(*parts)
        await _read_to_end(c, parts, out.__setitem__)
    finally:
        await c.stop()
    return out


async def read_partitions(s: Settings, topic: str, partitions: list[int]) -> dict[str, tuple[int, bytes | None]]:
    """Some partitions of a compacted topic read to their end now: the last value per key,
    with the partition it is in."""
    out: dict[str, tuple[int, bytes | None]] = {}
    if not partitions:
        return out
    c = kafka.consumer(s)
    await kafka.start(s, c)
    try:
        parts = [TopicPartition(topic, p) for p in partitions]
        c.assign(parts)
        await c.seek_to_beginning(*parts)
        ends = await c.end_offsets(parts)
        waiting = [tp for tp in parts if ends[tp] > 0]
        while [tp for tp in waiting if await c.position(tp) < ends[tp]]:
            for tp, recs in (await c.getmany(*waiting, timeout_ms=500)).items():
                for r in recs:
                    out[(r.key or b"").decode()] = (tp.partition, r.value or None)
    finally:
        await c.stop()
    return out


class Follower:
    """Applies every record of a compacted topic whose key starts with ``prefix`` (the
    prefix taken off), first all there is (``start``), then each new one (``run``)."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        apply: Apply,
        prefix: str = "",
        after_batch: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.prefix = prefix
        self._apply = apply
        self._after_batch = after_batch  # called after each batch of new records
        self._consumer: AIOKafkaConsumer | None = None

    def apply(self, key: str, value: bytes | None) -> None:
        if key.startswith(self.prefix):
            self._apply(key[len(self.prefix) :], value)

    async def start(self) -> None:
        """Read the topic to its end (created if missing)."""
        s = self.settings
        await ensure_topics(s, [self.topic])
        c = self._consumer = kafka.consumer(s, fetch_max_wait_ms=max(200, s.kafka.fetch_wait_ms))
        await kafka.start(s, c)
        parts = await partitions_of(c, self.topic)
        c.assign(parts)
        await c.seek_to_beginning(*parts)
        await _read_to_end(c, parts, self.apply)

    async def run(self, stopped: Callable[[], bool] = lambda: False) -> None:
        """Apply new records until cancelled (or ``stopped()``); broker errors are retried."""
        assert self._consumer is not None, "start() first"
        while not stopped():
            try:
                batch = await self._consumer.getmany(timeout_ms=500)
            except KafkaError as e:
                log.warning("following %s: %s; retrying in 1 s", self.topic, e)
                await asyncio.sleep(1)
                continue
            for recs in batch.values():
                for r in recs:
                    self.apply((r.key or b"").decode(), r.value or None)
            if batch and self._after_batch is not None:
                self._after_batch()

    async def stop(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()


async def publish(settings: Settings, topic: str, items: list[tuple[bytes, bytes | None]]) -> None:
    """Write a few keyed records (None: a tombstone) with a producer of their own, and wait
    until every one is acknowledged; for commands and tools, not for streams."""
    await ensure_topics(settings, [topic])
    p = kafka.producer(settings, linger_ms=0)
    await kafka.start(settings, p)
    try:
        for key, value in items:
            await p.send_and_wait(topic, value, key=key)
    finally:
        await p.stop()

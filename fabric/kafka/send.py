"""Batched sends: many records to many partitions with one batch (and one future) each.

``producer.send`` costs a future and a lookup per message; ``send_all`` builds the
batches itself, partitioning keys as the Java client does (murmur2), and waits for all.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner


@dataclass(slots=True)
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    #: a partition chosen by the caller; None: by the key (murmur2, as the Java client)
    partition: int | None = None


class _KeyPartitions:
    """murmur2(key) mod n, remembered: the answer depends on the key and the partition
    count only, so a topic that grows gets new answers, and the memory is bounded."""

    limit = 100_000

    def __init__(self) -> None:
        self._of: dict[tuple[int, bytes], int] = {}
        self._hash = DefaultPartitioner()

    def __call__(self, key: bytes, parts: list[int]) -> int:
        p = self._of.get((len(parts), key), -1)
        if p < 0:
            p = self._hash(key, parts, parts)
            if len(self._of) >= self.limit:
                self._of.clear()
            self._of[(len(parts), key)] = p
        return p


_by_key = _KeyPartitions()


async def send_all(prod: AIOKafkaProducer, records: list[OutRecord]) -> None:
    """Send records as whole batches per partition, then wait for every delivery.
    Raises if any batch failed."""
    futures = await send_batches(prod, records)
    if futures:
        await asyncio.gather(*futures)


async def send_batches(prod: AIOKafkaProducer, records: list[OutRecord]) -> list[asyncio.Future[Any]]:
    """Hand records to the producer as whole batches per partition, in order; returns the
    deliveries to wait for. The partitions of each topic come from the producer's metadata,
    which it refreshes."""
    by_tp: dict[tuple[str, int], list[OutRecord]] = {}
    parts_of: dict[str, list[int]] = {}
    for r in records:
        parts = parts_of.get(r.topic)
        if parts is None:
            parts = parts_of[r.topic] = sorted(await prod.partitions_for(r.topic))
        if r.partition is not None:
            p = r.partition
        elif r.key is None:
            p = random.choice(parts)
        else:
            p = _by_key(r.key, parts)
        by_tp.setdefault((r.topic, p), []).append(r)
    futures: list[asyncio.Future[Any]] = []
    for (topic, p), recs in by_tp.items():
        batch = prod.create_batch()
        for r in recs:
            if batch.append(key=r.key, value=r.value, timestamp=None, headers=r.headers) is None:
                batch.close()
                futures.append(await prod.send_batch(batch, topic, partition=p))
                batch = prod.create_batch()
                if batch.append(key=r.key, value=r.value, timestamp=None, headers=r.headers) is None:
                    raise ValueError(f"a record of {len(r.value)} bytes does not fit in a producer batch")
        batch.close()
        futures.append(await prod.send_batch(batch, topic, partition=p))
    return futures


class GroupSend:
    """Records of many concurrent writers, sent together: each round takes everything
    waiting and sends it as one batch per partition; the next round starts when the
    previous one is delivered (a group commit).

    aiokafka's ``send_batch`` keeps one batch in flight per partition, and a caller that
    finds one waits for it to drain within what is left of its timeout. A hundred
    coroutines each sending their own small batch to the same partitions queue behind
    each other until their timeouts run out; here they share one batch instead.
    A writer's records go out in the order it sent them (it waits for each round)."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self._waiting: list[tuple[list[OutRecord], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def send(self, records: list[OutRecord]) -> None:
        """Until ``records`` are delivered; raises what their round's delivery raised."""
        if self._task is None:
            self._task = asyncio.create_task(self._rounds(), name="group-send")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((records, fut))
        self._wake.set()
        await fut

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for _, fut in self._waiting:
            fut.cancel()
        self._waiting.clear()

    async def _rounds(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            taken, self._waiting = self._waiting, []
            taken = [(recs, fut) for recs, fut in taken if not fut.done()]  # a cancelled writer sends nothing
            if not taken:
                continue
            try:
                await send_all(self.producer, [r for recs, _ in taken for r in recs])
            except asyncio.CancelledError:
                for _, fut in taken:
                    fut.cancel()
                raise
            except Exception as e:
                for _, fut in taken:
                    if not fut.done():
                        fut.set_exception(e)
            else:
                for _, fut in taken:
                    if not fut.done():
                        fut.set_result(None)

"""Watermarks of the cache: per partition, up to when the cache is known complete.

The materialize stage notes the Kafka timestamp of the last record it applied per
partition (``applied``) and writes ``P:watermarks``, four times a second while records
flow and once a second when it has read all there is (the router trusts a caught-up
report for 3 s): for each partition "now" while the consumer has read all there is,
else the produce time of the last applied record. The router turns this into each
pull's ``watermark_lag_ms``.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from fabric.cache.keys import CacheKeys


class Watermarks:
    every_s = 0.25
    idle_every_s = 1.0

    def __init__(self, cache: aioredis.Redis, keys: CacheKeys) -> None:
        self.cache = cache
        self.keys = keys
        self.applied_ts: dict[TopicPartition, int] = {}  # Kafka timestamp of the last applied record
        self._next = 0.0
        self._reported: dict[TopicPartition, int] = {}

    def applied(self, tp: TopicPartition, timestamp_ms: int) -> None:
        self.applied_ts[tp] = timestamp_ms

    def forget(self, tp: TopicPartition) -> None:
        self.applied_ts.pop(tp, None)

    def due_in_ms(self, loop_now: float) -> int:
        """Milliseconds until the next report is due."""
        return max(1, int((self._next - loop_now) * 1000))

    async def report(self, consumer: AIOKafkaConsumer, loop_now: float) -> None:
        """Write the watermarks of the consumer's partitions, at most every ``every_s``."""
        if loop_now < self._next:
            return
        now_ms = int(time.time() * 1000)
        fields = {}
        idle = self.applied_ts == self._reported
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            caught_up = high is not None and await consumer.position(tp) >= high
            idle = idle and caught_up
            complete = now_ms if caught_up else self.applied_ts.get(tp, 0)
            fields[f"{tp.topic}:{tp.partition}"] = f"{complete},{now_ms},{int(caught_up)}"
        self._reported = dict(self.applied_ts)
        self._next = loop_now + (self.idle_every_s if idle else self.every_s)
        if fields:
            await self.cache.hset(self.keys.watermarks, mapping=fields)  # type: ignore[arg-type]

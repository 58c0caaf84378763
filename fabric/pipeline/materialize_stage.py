"""The materialize stage: typed topics -> the Redis hot cache and per-tenant change feed.

The writing itself (one Lua script per tenant of a partition batch) is in
``pipeline/materialize.py``; this is the Kafka loop around it, and the cache's own
position: which offset each partition continues from, a cache that lost its state
being rebuilt, and the watermarks (``pipeline/watermarks.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter
from redis.exceptions import RedisError, ResponseError

from fabric import kafka, redis_clients
from fabric.errors import InvalidEvent
from fabric.events.codecs import decode_typed
from fabric.kafka.send import OutRecord, send_all
from fabric.kafka.topics import all_topics, dlq_topic, ensure_topics, typed_topics
from fabric.pipeline.deadletter import dlq_record
from fabric.pipeline.materialize import STATE_LOST, Change, Materializer, change_from_headers, change_from_record
from fabric.pipeline.stage import EVENTS, Stage
from fabric.pipeline.watermarks import Watermarks
from fabric.retry import until_done

log = logging.getLogger(__name__)

REBUILDS = Counter("fabric_cache_rebuilds_total", "Partitions replayed because the cache lost them")


#: Redis errors about Redis, not about what was sent: the batch is retried, never dead-lettered
_TRANSIENT = ("OOM", "BUSY", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "MOVED", "ASK", "NOSCRIPT")


def refuses_records(e: ResponseError) -> bool:
    """Whether Redis refused what it was sent (a record to dead-letter), not its own state."""
    return not str(e).startswith(_TRANSIENT)


class MaterializeStage(Stage):
    """Typed topics -> Redis hot cache and per-tenant change feed.

    Redis, not the consumer group, holds the position: each partition's applied
    offset is written with its changes, and on assignment the consumer seeks just past
    it. When that offset is gone although the group had consumed the partition, the
    cache lost its state (flushed, or restarted without persistence): the partition
    is replayed from the start of the topic, with pushes only for what subscribers
    have not seen, and ``P:rebuilding`` tells the router to answer 503 or stale.
    """

    stage = "materialize"
    tick_s = 1.0
    _cache: aioredis.Redis | None = None

    async def on_start(self) -> None:
        s = self.settings
        await ensure_topics(s, all_topics(s, self.catalogue))
        self._cache = self.cache = redis_clients.connect(s)
        self.materializer = Materializer(s, self.cache)
        self.keys = self.materializer.keys
        self.fresh: set[TopicPartition] = set()  # may start without an offset key
        self.push_from: dict[TopicPartition, int] = {}
        self.rebuild_target: dict[TopicPartition, int] = {}
        self._next_tick = 0.0
        self._next_commit = 0.0
        self.watermarks = Watermarks(self.cache, self.keys)
        self._positioning = asyncio.Lock()  # assignment and the flush check must not interleave
        self._producer = self.producer = kafka.producer(s)
        await kafka.start(s, self.producer)
        # read_uncommitted: a change reaches the cache and its subscribers as soon as the route
        # stage has written it, not when its transaction commits (up to commit_interval_ms
        # later). Records of a transaction that aborts are written again by the next owner
        # with the same id and sequence, and applying an event twice changes nothing.
        self.consumer = kafka.consumer(
            s, group=f"{s.kafka.group_prefix}.materialize", isolation_level="read_uncommitted"
        )
        self.consumer.subscribe(typed_topics(s, self.catalogue), listener=_Reposition(self))

    async def on_stop(self) -> None:
        if self.consumer:
            with contextlib.suppress(KafkaError):
                await self.consumer.commit()
            await self.consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        if self._cache is not None:
            await self._cache.aclose()

    async def position_from_cache(self, tps: Iterable[TopicPartition]) -> None:
        """Seek partitions to just past what the cache already holds."""
        assert self.consumer is not None
        async with self._positioning:
            await self._position_from_cache(list(tps))

    async def _position_from_cache(self, tps: list[TopicPartition]) -> None:
        assert self.consumer is not None
        if not tps:
            return
        applied = await self.cache.mget([self.keys.offset(tp.topic, tp.partition) for tp in tps])
        missing = []
        for tp, offset in zip(tps, applied, strict=True):
            if offset is None:
                missing.append(tp)
            else:
                self.consumer.seek(tp, int(offset) + 1)
                self.fresh.discard(tp)
        if not missing:
            return
        # the group's committed offsets, asked for all partitions at once
        committed = await asyncio.gather(*(self.consumer.committed(tp) for tp in missing))
        lost: dict[TopicPartition, int] = {}
        fresh = []
        for tp, offset in zip(missing, committed, strict=True):
            if offset is None or offset <= 0:  # never consumed: a fresh start
                fresh.append(tp)
            else:
                lost[tp] = offset
        if fresh:
            self.fresh.update(fresh)
            await self.consumer.seek_to_beginning(*fresh)
        await self.rebuild(lost)

    async def rebuild(self, lost: dict[TopicPartition, int]) -> None:
        """Replay partitions from the start; ``lost`` maps each to the first offset to push."""
        assert self.consumer is not None
        if not lost:
            return
        ends = await self.consumer.end_offsets(list(lost))
        await self.consumer.seek_to_beginning(*lost)
        for tp, push_from in lost.items():
            log.warning("materialize: the cache lost %s[%d]; replaying offsets 0..%d", tp.topic, tp.partition, ends[tp])
            self.fresh.add(tp)
            self.push_from[tp] = push_from
            self.rebuild_target[tp] = ends[tp]
            REBUILDS.inc()
        await self.cache.set(self.keys.rebuilding, "1", ex=5)

    async def _rewind(self) -> None:
        assert self.consumer is not None
        async for attempt in until_done("materialize: reposition", (KafkaError, OSError, RedisError),
                                        stop=lambda: self.should_stop):  # fmt: skip
            with attempt:
                await self.position_from_cache(self.consumer.assignment())

    async def handle(self, batch: dict[Any, list[Any]]) -> None:
        """Each partition's changes are applied concurrently (one Redis round trip for all of
        them instead of one after another); within a partition, in offset order."""
        dead: list[OutRecord] = []
        await asyncio.gather(*(self._apply_partition(tp, recs, dead) for tp, recs in batch.items()))
        if dead:
            await send_all(self.producer, dead)
            EVENTS.labels("materialize", "dlq").inc(len(dead))
        await self._track_rebuilds()

    async def _apply_partition(self, tp: TopicPartition, recs: list[Any], dead: list[OutRecord]) -> None:
        changes: list[Change] = []
        for r in recs:
            try:
                ct = self.catalogue.by_schema_id.get(int.from_bytes(r.value[1:5], "big")) if r.value else None
                fast = change_from_headers(ct.name, ct.kind, dict(r.headers), r.offset) if ct else None
                if fast is not None:
                    changes.append(fast)
                    continue
                ct, rec = decode_typed(r.value, self.catalogue)
                changes.append(change_from_record(ct.name, ct.kind, rec, r.offset))
            except InvalidEvent as e:
                if tp not in self.rebuild_target:
                    dead.append(dlq_record(r, e, dlq_topic(self.settings)))
        try:
            n = await self.materializer.apply(
                tp.topic,
                tp.partition,
                changes,
                last_offset=recs[-1].offset,
                allow_missing=tp in self.fresh,
                push_from=self.push_from.get(tp, 0),
            )
        except ResponseError as e:
            if not refuses_records(e):
                raise  # Redis as a whole cannot write now: the stage retries the batch
            n = await self._apply_isolating(tp, recs, changes, dead)
        if n == STATE_LOST:
            await self.rebuild({tp: recs[0].offset})
            return
        self.fresh.discard(tp)
        self.watermarks.applied(tp, recs[-1].timestamp)
        EVENTS.labels("materialize", "changed").inc(n)
        EVENTS.labels("materialize", "unchanged").inc(len(changes) - n)

    async def _apply_isolating(
        self, tp: TopicPartition, recs: list[Any], changes: list[Change], dead: list[OutRecord]
    ) -> int:
        """Apply changes one at a time; one Redis refuses goes to the DLQ with Redis's reason
        and the partition goes on (it would otherwise be retried forever)."""
        by_offset = {r.offset: r for r in recs}
        n = 0
        for c in changes:
            try:
                n += max(0, await self.materializer.apply(tp.topic, tp.partition, [c], last_offset=c.offset,
                                                          allow_missing=True, push_from=self.push_from.get(tp, 0)))  # fmt: skip
            except ResponseError as e:
                if not refuses_records(e):
                    raise
                log.warning("materialize: Redis refused %s@%d: %s", tp.topic, c.offset, e)
                reason = InvalidEvent(f"the cache refused the event: {str(e)[:200]}")
                dead.append(dlq_record(by_offset[c.offset], reason, dlq_topic(self.settings)))
        await self.materializer.apply(tp.topic, tp.partition, [], last_offset=recs[-1].offset, allow_missing=True)
        return n

    async def _track_rebuilds(self) -> None:
        assert self.consumer is not None
        for tp, target in list(self.rebuild_target.items()):
            if await self.consumer.position(tp) >= target:
                del self.rebuild_target[tp]
                self.push_from.pop(tp, None)
                log.warning("materialize: %s[%d] rebuilt", tp.topic, tp.partition)
        if self.rebuild_target:
            await self.cache.set(self.keys.rebuilding, "1", ex=5)

    async def commit(self, batch: dict[Any, list[Any]]) -> None:
        """Redis holds where each partition continues (its applied offset, written with the
        changes), so the group's offsets are only a record of having consumed: committed once
        a second, not once a batch (a round trip to the coordinator on the push path)."""
        now = asyncio.get_running_loop().time()
        if now >= self._next_commit:
            self._next_commit = now + 1.0
            await super().commit(batch)

    def next_tick_ms(self) -> int:
        loop_now = asyncio.get_running_loop().time()
        return min(self.watermarks.due_in_ms(loop_now), max(1, int((self._next_tick - loop_now) * 1000)))

    async def tick(self) -> None:
        """Four times a second while records flow (once a second when idle), the watermarks; once a second, even without traffic: notice a
        flushed cache, mark it ready."""
        now = asyncio.get_running_loop().time()
        if self.consumer is None:
            return
        await self.watermarks.report(self.consumer, now)
        if now < self._next_tick:
            return
        self._next_tick = now + self.tick_s
        await self._track_rebuilds()
        if self.rebuild_target or await self.cache.exists(self.keys.ready):
            return
        async with self._positioning:
            await self._find_lost()

    async def _find_lost(self) -> None:
        assert self.consumer is not None
        lost = {}
        for tp in self.consumer.assignment():
            if tp not in self.fresh and await self.materializer.applied_offset(tp.topic, tp.partition) is None:
                lost[tp] = await self.consumer.position(tp)
        await self.rebuild(lost)
        if not self.rebuild_target:
            await self.cache.set(self.keys.ready, "1")
            await self.cache.delete(self.keys.rebuilding)


class _Reposition(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, stage: MaterializeStage) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:
            self.stage.watermarks.forget(tp)
            self.stage.fresh.discard(tp)
            self.stage.rebuild_target.pop(tp, None)
            self.stage.push_from.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.stage.position_from_cache(assigned)

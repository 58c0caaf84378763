"""The worker's batch loops, as ``mode`` services so ``mode.Worker`` runs and stops them.

Each stage is a plain aiokafka consumer-group loop (``getmany`` -> batch logic ->
batched sends or one Redis script call -> commit), because Faust's per-message
stream path tops out near 10k events/s on these machines while a batch loop moves
several times that (bench/worker.py measures both).
"""

from __future__ import annotations

import abc
import asyncio
import fcntl
import logging
import random
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import mode
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import Counter, Histogram
from redis.exceptions import RedisError, ResponseError

from fabric import kafka_clients, redis_clients
from fabric.errors import InvalidEvent
from fabric.pipeline.materialize import STATE_LOST, Change, Materializer, change_from_headers, change_from_record
from fabric.pipeline.route import OutRecord, Router, dlq_record
from fabric.registry.store import RegistryFollower, SchemaStore
from fabric.settings import Settings
from fabric.topics.admin import all_topics, dlq_topic, ensure_topics, ingest_topic, typed_topics
from fabric.topics.codecs import decode_typed
from fabric.topics.registry import Registry

log = logging.getLogger(__name__)

EVENTS = Counter("fabric_worker_events_total", "Events handled by a stage", ["stage", "outcome"])
REBUILDS = Counter("fabric_cache_rebuilds_total", "Partitions replayed because the cache lost them")
BATCH_SECONDS = Histogram(
    "fabric_worker_batch_seconds", "Time to handle one batch", ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)  # fmt: skip


_partitions: dict[str, list[int]] = {}
_partition_of: dict[tuple[str, bytes], int] = {}


async def send_all(prod: AIOKafkaProducer, records: list[OutRecord]) -> None:
    """Send records as whole batches per partition, then wait for every delivery.

    ``producer.send`` costs a future and a lookup per message; building the batches
    here (same murmur2 partitioning as the Java client, cached per key) costs one per
    partition. Raises if any batch failed."""
    by_tp: dict[tuple[str, int], list[OutRecord]] = {}
    for r in records:
        parts = _partitions.get(r.topic)
        if parts is None:
            parts = _partitions[r.topic] = sorted(await prod.partitions_for(r.topic))
        if r.partition is not None:
            p = r.partition
        elif r.key is None:
            p = random.choice(parts)
        else:
            p = _partition_of.get((r.topic, r.key), -1)
            if p < 0:
                p = DefaultPartitioner()(r.key, parts, parts)
                if len(_partition_of) > 100_000:
                    _partition_of.clear()
                _partition_of[(r.topic, r.key)] = p
        by_tp.setdefault((r.topic, p), []).append(r)
    futures = []
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
    if futures:
        await asyncio.gather(*futures)


class RegistryService(mode.Service):
    """Follows the schema registry topic for the worker's stages (started before them)."""

    def __init__(self, settings: Settings, registry: Registry, **kw: Any) -> None:
        self.follower = RegistryFollower(settings, SchemaStore(registry))
        super().__init__(**kw)

    async def on_start(self) -> None:
        await self.follower.start()

    async def on_stop(self) -> None:
        await self.follower.stop()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """A rebalance waits for the batch in flight, so its transaction (records and offsets)
    commits before the partitions move and the next owner starts after it; a batch whose
    fetch a rebalance overlapped is dropped and the partitions read again from the
    committed offsets (``Stage._run``), so no two owners handle one record."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.stage.batch_lock:
            self.stage.epoch += 1
            await self.stage.revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        async with self.stage.batch_lock:
            self.stage.epoch += 1
            await self.stage.assigned(list(assigned))


class Stage(mode.Service):
    """Shared loop: fetch a batch, handle it, commit; back off on broker errors."""

    stage = "stage"

    def __init__(
        self, settings: Settings, registry: Registry, follower: RegistryFollower | None = None, **kw: Any
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.follower = follower
        self.consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self.batches = 0
        self.batch_lock = asyncio.Lock()  # a batch and a rebalance never interleave
        self.epoch = 0  # counts rebalances
        super().__init__(**kw)

    def subscribe(self, topics: list[str], group: str) -> AIOKafkaConsumer:
        """A group consumer of ``topics`` whose rebalances this stage hears of (see ``_Rebalance``)."""
        consumer = kafka_clients.consumer(self.settings, group=group)
        consumer.subscribe(topics, listener=_Rebalance(self))
        return consumer

    async def revoked(self, tps: list[TopicPartition]) -> None:
        """Partitions about to move away (the batch in flight has finished)."""

    async def assigned(self, tps: list[TopicPartition]) -> None:
        """Partitions this stage now owns."""

    @abc.abstractmethod
    async def handle(self, batch: dict[Any, list[Any]]) -> None:
        """Process one ``getmany`` batch; each stage says what that means."""

    async def tick(self) -> None:
        """Called between batches; stages override it for periodic work."""

    async def commit(self, batch: dict[Any, list[Any]]) -> None:
        """Mark the batch done in the consumer group (after ``handle`` succeeded)."""
        assert self.consumer is not None
        await self.consumer.commit()

    async def on_started(self) -> None:
        self.add_future(self._run())

    async def _run(self) -> None:
        assert self.consumer is not None
        # Joining the group waits for the broker's rebalance; doing it here, not in
        # on_start, lets every stage of the worker join at the same time.
        await kafka_clients.start(self.settings, self.consumer)
        wait = self.settings.worker.batch_wait_ms
        while not self.should_stop:
            try:
                await self.tick()
                epoch = self.epoch
                batch = await self.consumer.getmany(
                    timeout_ms=max(wait, 100), max_records=self.settings.worker.batch_max
                )
                if not batch:
                    continue
                async with self.batch_lock:
                    stale = self.epoch != epoch
                    if not stale:
                        await self._handle(batch)
                if stale:
                    # A rebalance came while fetching: the batch may hold records of partitions
                    # this stage no longer owns, so it is dropped and every partition read again
                    # from the committed offsets (the fetch positions moved past the batch).
                    await self._rewind()
                    continue
                self.batches += 1
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError, RedisError) as e:
                # Not committed: the batch is fetched again after a seek to the committed offsets.
                log.warning("%s: %s; retrying the batch in 1 s", self.stage, e)
                await self._rewind()
                await asyncio.sleep(1.0)

    async def _handle(self, batch: dict[Any, list[Any]]) -> None:
        if self.follower and self.follower.store.unknown_ids(r.value for rs in batch.values() for r in rs):
            await self.follower.catch_up()  # a schema version registered moments ago
        with BATCH_SECONDS.labels(self.stage).time():
            await self.handle(batch)
        await self.commit(batch)

    async def _rewind(self) -> None:
        """Go back to the committed offsets; keeps trying, since going on would skip records."""
        assert self.consumer is not None
        while not self.should_stop:
            try:
                for tp in self.consumer.assignment():
                    committed = await self.consumer.committed(tp)
                    if committed is None:
                        await self.consumer.seek_to_beginning(tp)
                    else:
                        self.consumer.seek(tp, committed)
                return
            except KafkaError as e:
                log.warning("%s: could not rewind yet (%s); retrying in 1 s", self.stage, e)
                await asyncio.sleep(1.0)


class TransactionalStage(Stage):
    """A stage that consumes, produces and commits its input offsets in one Kafka
    transaction per batch (consume-transform-produce), so a worker killed mid-batch leaves
    nothing that ``read_committed`` readers see, and the next owner of the partitions
    handles the batch again. The transactional id is this worker's slot for the stage
    (``WorkerSlot``): a worker restarted after a crash takes the same one, which makes
    the broker abort the dead worker's open transaction at once instead of after
    ``transaction_timeout_ms``. On a broker without transactions (Tansu) records are
    sent, then the offsets committed."""

    group = ""
    transactional_id: str | None = None

    async def open_transactions(self, group: str) -> None:
        s = self.settings
        self.group = group
        if s.kafka.transactions:
            self._slot = WorkerSlot.claim(s.data_dir / "run", self.stage)
            self.transactional_id = f"{group}.{socket.gethostname()}.{self._slot.number}"
        await self._open_producer()

    async def _open_producer(self) -> None:
        if self.transactional_id is None:
            self._producer = self.producer = kafka_clients.producer(self.settings)
        else:
            self._producer = self.producer = kafka_clients.producer(
                self.settings,
                transactional_id=self.transactional_id,
                transaction_timeout_ms=self.settings.kafka.transaction_timeout_ms,
            )
        await kafka_clients.start(self.settings, self.producer)

    async def produce(self, records: list[OutRecord], offsets: dict[TopicPartition, int]) -> None:
        """Send ``records`` and mark ``offsets`` consumed, together (see the class)."""
        if self.transactional_id is None:
            await send_all(self.producer, records)
            return
        try:
            async with self.producer.transaction():
                await send_all(self.producer, records)
                if offsets:
                    await self.producer.send_offsets_to_transaction(offsets, self.group)
        except KafkaError:
            # aborted, or the producer can no longer be used (fenced, timed out): a new one
            # with the same id starts clean; the stage rewinds and handles the batch again
            await self.producer.stop()
            await self._open_producer()
            raise

    async def commit(self, batch: dict[Any, list[Any]]) -> None:
        if self.transactional_id is None:
            await super().commit(batch)  # else the offsets were committed with the transaction

    async def on_stop(self) -> None:
        if self.consumer:
            await self.consumer.stop()
        if self._producer is not None:
            await self._producer.stop()


class RouteStage(TransactionalStage):
    """``ctx.ingest`` -> decode, validate, enrich -> typed topics, or ``ctx.dlq``; one
    transaction per batch (see ``TransactionalStage``)."""

    stage = "route"

    async def on_start(self) -> None:
        s = self.settings
        await ensure_topics(s, all_topics(s, self.registry))
        self.router = Router(s, self.registry)
        await self.open_transactions(f"{s.kafka.group_prefix}.route")
        self.consumer = self.subscribe([ingest_topic(s)], self.group)

    async def handle(self, batch: dict[Any, list[Any]]) -> None:
        records = [r for recs in batch.values() for r in recs]
        result = self.router.route(records)
        await self.produce(result.ok + result.dead, {tp: recs[-1].offset + 1 for tp, recs in batch.items()})
        EVENTS.labels("route", "ok").inc(len(result.ok))
        if result.dead:
            EVENTS.labels("route", "dlq").inc(len(result.dead))


class WorkerSlot:
    """A small number this worker holds while it runs, the lowest one free on this host
    and data dir: an exclusive lock on ``<run_dir>/<name>-<n>.lock``. The kernel drops the
    lock when the process dies, however it dies, so a restarted worker gets the same number."""

    def __init__(self, number: int, handle: Any) -> None:
        self.number = number
        self._handle = handle

    @classmethod
    def claim(cls, run_dir: Path, name: str, limit: int = 1024) -> WorkerSlot:
        run_dir.mkdir(parents=True, exist_ok=True)
        for n in range(limit):
            handle = (run_dir / f"{name}-{n}.lock").open("a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            return cls(n, handle)
        raise RuntimeError(f"more than {limit} {name} workers share {run_dir}")


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
        await ensure_topics(s, all_topics(s, self.registry))
        self._cache = self.cache = redis_clients.connect(s)
        self.materializer = Materializer(s, self.cache)
        self.keys = self.materializer.keys
        self.fresh: set[TopicPartition] = set()  # may start without an offset key
        self.push_from: dict[TopicPartition, int] = {}
        self.rebuild_target: dict[TopicPartition, int] = {}
        self._next_tick = 0.0
        self._next_watermark = 0.0
        self.applied_ts: dict[TopicPartition, int] = {}  # Kafka timestamp of the last applied record
        self._positioning = asyncio.Lock()  # assignment and the flush check must not interleave
        self._producer = self.producer = kafka_clients.producer(s)
        await kafka_clients.start(s, self.producer)
        self.consumer = kafka_clients.consumer(s, group=f"{s.kafka.group_prefix}.materialize")
        self.consumer.subscribe(typed_topics(s, self.registry), listener=_Reposition(self))

    async def on_stop(self) -> None:
        if self.consumer:
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
        # One request for the group's committed offsets (consumer.committed() asks per partition).
        committed = await self.consumer._coordinator.fetch_committed_offsets(missing)
        lost: dict[TopicPartition, int] = {}
        fresh = []
        for tp in missing:
            meta = committed.get(tp)
            if meta is None or meta.offset <= 0:  # never consumed: a fresh start
                fresh.append(tp)
            else:
                lost[tp] = meta.offset
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
        while not self.should_stop:
            try:
                await self.position_from_cache(self.consumer.assignment())
                return
            except (KafkaError, OSError, RedisError) as e:
                log.warning("materialize: cannot reposition yet (%s); retrying in 1 s", e)
                await asyncio.sleep(1.0)

    async def handle(self, batch: dict[Any, list[Any]]) -> None:
        dead: list[OutRecord] = []
        for tp, recs in batch.items():
            changes: list[Change] = []
            for r in recs:
                try:
                    ct = self.registry.by_schema_id.get(int.from_bytes(r.value[1:5], "big")) if r.value else None
                    fast = change_from_headers(ct.name, ct.kind, dict(r.headers), r.offset) if ct else None
                    if fast is not None:
                        changes.append(fast)
                        continue
                    ct, rec = decode_typed(r.value, self.registry)
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
                continue
            self.fresh.discard(tp)
            self.applied_ts[tp] = recs[-1].timestamp
            EVENTS.labels("materialize", "changed").inc(n)
            EVENTS.labels("materialize", "unchanged").inc(len(changes) - n)
        if dead:
            await send_all(self.producer, dead)
            EVENTS.labels("materialize", "dlq").inc(len(dead))
        await self._track_rebuilds()

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

    async def tick(self) -> None:
        """Four times a second, the watermarks; once a second, even without traffic: notice a
        flushed cache, mark it ready."""
        now = asyncio.get_running_loop().time()
        if self.consumer is None:
            return
        if now >= self._next_watermark:
            self._next_watermark = now + 0.25
            await self._report_watermarks()
        if now < self._next_tick:
            return
        self._next_tick = now + self.tick_s
        await self._track_rebuilds()
        if self.rebuild_target or await self.cache.exists(self.keys.ready):
            return
        async with self._positioning:
            await self._find_lost()

    async def _report_watermarks(self) -> None:
        """Per partition, up to when the cache is known complete (``P:watermarks``): "now" while
        the consumer has read all there is, else the produce time of the last applied record.
        The router turns this into each pull's ``watermark_lag_ms``."""
        assert self.consumer is not None
        now_ms = int(time.time() * 1000)
        fields = {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            caught_up = high is not None and await self.consumer.position(tp) >= high
            complete = now_ms if caught_up else self.applied_ts.get(tp, 0)
            fields[f"{tp.topic}:{tp.partition}"] = f"{complete},{now_ms},{int(caught_up)}"
        if fields:
            await self.cache.hset(self.keys.watermarks, mapping=fields)  # type: ignore[arg-type]

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
            self.stage.fresh.discard(tp)
            self.stage.rebuild_target.pop(tp, None)
            self.stage.push_from.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.stage.position_from_cache(assigned)

"""The worker's batch loops, as ``mode`` services so Faust's worker runs and stops them.

Each stage is a plain aiokafka consumer-group loop (``getmany`` -> batch logic ->
batched sends or one Redis script call -> commit), because Faust's per-message
stream path tops out near 10k events/s on these machines while a batch loop moves
several times that. Faust keeps the worker process: lifecycle, signals, logging,
and (with CEP) its tables.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import mode
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Histogram
from redis.exceptions import RedisError

from fabric.errors import InvalidEvent
from fabric.pipeline.materialize import Change, Materializer, change_from_record
from fabric.pipeline.route import OutRecord, Router, dlq_record
from fabric.settings import Settings
from fabric.topics.admin import all_topics, dlq_topic, ensure_topics, ingest_topic, typed_topics
from fabric.topics.codecs import decode_typed
from fabric.topics.registry import Registry

log = logging.getLogger(__name__)

EVENTS = Counter("fabric_worker_events_total", "Events handled by a stage", ["stage", "outcome"])
BATCH_SECONDS = Histogram(
    "fabric_worker_batch_seconds", "Time to handle one batch", ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)  # fmt: skip


def consumer(settings: Settings, topics: list[str], group: str) -> AIOKafkaConsumer:
    k = settings.kafka
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=k.bootstrap,
        client_id=k.client_id,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        session_timeout_ms=k.session_timeout_ms,
        heartbeat_interval_ms=max(200, k.session_timeout_ms // 5),
        rebalance_timeout_ms=k.session_timeout_ms,
    )


def producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap,
        client_id=settings.kafka.client_id,
        linger_ms=2,
        max_batch_size=512 * 1024,
        max_request_size=settings.router.max_event_bytes + 64 * 1024,
        acks="all",
    )


async def send_all(prod: AIOKafkaProducer, records: list[OutRecord]) -> None:
    """Queue every record, then wait for all deliveries; raises if any failed."""
    futures = [await prod.send(r.topic, r.value, key=r.key, headers=r.headers or None) for r in records]
    if futures:
        await asyncio.gather(*futures)


class Stage(mode.Service):
    """Shared loop: fetch a batch, handle it, commit; back off on broker errors."""

    stage = "stage"

    def __init__(self, settings: Settings, registry: Registry, **kw: Any) -> None:
        self.settings = settings
        self.registry = registry
        self.consumer: AIOKafkaConsumer | None = None
        self.batches = 0
        super().__init__(**kw)

    async def handle(self, batch: dict[Any, list[Any]]) -> None:
        raise NotImplementedError

    async def on_started(self) -> None:
        self.add_future(self._run())

    async def _run(self) -> None:
        assert self.consumer is not None
        wait = self.settings.worker.batch_wait_ms
        while not self.should_stop:
            try:
                batch = await self.consumer.getmany(
                    timeout_ms=max(wait, 100), max_records=self.settings.worker.batch_max
                )
                if not batch:
                    continue
                with BATCH_SECONDS.labels(self.stage).time():
                    await self.handle(batch)
                await self.consumer.commit()
                self.batches += 1
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError, RedisError) as e:
                # Not committed: the batch is fetched again after a seek to the committed offsets.
                log.warning("%s: %s; retrying the batch in 1 s", self.stage, e)
                await self._rewind()
                await asyncio.sleep(1.0)

    async def _rewind(self) -> None:
        assert self.consumer is not None
        try:
            for tp in self.consumer.assignment():
                committed = await self.consumer.committed(tp)
                if committed is None:
                    await self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, committed)
        except KafkaError as e:
            log.warning("%s: could not rewind: %s", self.stage, e)


class RouteStage(Stage):
    """``ctx.ingest`` -> decode, validate, enrich -> typed topics, or ``ctx.dlq``."""

    stage = "route"

    async def on_start(self) -> None:
        s = self.settings
        await ensure_topics(s, all_topics(s, self.registry))
        self.router = Router(s, self.registry)
        self.producer = producer(s)
        await self.producer.start()
        self.consumer = consumer(s, [ingest_topic(s)], s.kafka.group)
        await self.consumer.start()

    async def on_stop(self) -> None:
        if self.consumer:
            await self.consumer.stop()
        await self.producer.stop()

    async def handle(self, batch: dict[Any, list[Any]]) -> None:
        records = [r for recs in batch.values() for r in recs]
        result = self.router.route(records)
        await send_all(self.producer, result.ok + result.dead)
        EVENTS.labels("route", "ok").inc(len(result.ok))
        if result.dead:
            EVENTS.labels("route", "dlq").inc(len(result.dead))


class MaterializeStage(Stage):
    """Typed topics -> Redis hot cache and per-tenant change feed."""

    stage = "materialize"

    async def on_start(self) -> None:
        s = self.settings
        await ensure_topics(s, all_topics(s, self.registry))
        self.redis = aioredis.from_url(s.redis.url)
        self.materializer = Materializer(s, self.redis)
        self.producer = producer(s)
        await self.producer.start()
        self.consumer = consumer(s, typed_topics(s, self.registry), f"{s.kafka.group}-materialize")
        await self.consumer.start()

    async def on_stop(self) -> None:
        if self.consumer:
            await self.consumer.stop()
        await self.producer.stop()
        await self.redis.aclose()

    async def handle(self, batch: dict[Any, list[Any]]) -> None:
        dead: list[OutRecord] = []
        for tp, recs in batch.items():
            changes: list[Change] = []
            for r in recs:
                try:
                    ct, rec = decode_typed(r.value, self.registry)
                    changes.append(change_from_record(ct.name, ct.kind, rec, r.offset))
                except InvalidEvent as e:
                    dead.append(dlq_record(r, e, dlq_topic(self.settings)))
            n = await self.materializer.apply(tp.topic, tp.partition, changes)
            EVENTS.labels("materialize", "changed").inc(n)
            EVENTS.labels("materialize", "unchanged").inc(len(changes) - n)
        if dead:
            await send_all(self.producer, dead)
            EVENTS.labels("materialize", "dlq").inc(len(dead))

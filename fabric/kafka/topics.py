"""Topic names and creation. Every stage creates the topics it touches, so start order is free."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from fabric import kafka
from fabric.errors import BackendUnavailable
from fabric.events.catalogue import Catalogue
from fabric.settings import Settings

log = logging.getLogger(__name__)


def ingest_topic(s: Settings) -> str:
    return s.topic("ingest")


def dlq_topic(s: Settings) -> str:
    return s.topic("dlq")


def typed_topics(s: Settings, catalogue: Catalogue) -> list[str]:
    return sorted({s.topic(ct.topic) for ct in catalogue.context_types.values()})


def all_topics(s: Settings, catalogue: Catalogue) -> list[str]:
    return [ingest_topic(s), dlq_topic(s), *typed_topics(s, catalogue)]


#: topics that are tables: the last record per key is what counts, so Kafka keeps only that
TABLES = ("registry", "cep-checkpoints")


def new_topic(s: Settings, name: str) -> NewTopic:
    """How the fabric creates a topic: partitions, replicas and ``min.insync.replicas`` from
    settings, ``cleanup.policy=compact`` for the tables."""
    k = s.kafka
    configs = {"min.insync.replicas": str(k.min_insync)}
    if name.removeprefix(f"{k.topic_prefix}.") in TABLES:
        configs["cleanup.policy"] = "compact"
    return NewTopic(name, k.partitions, k.replicas, topic_configs=configs)


async def ensure_topics(s: Settings, topics: list[str], timeout: float = 30.0) -> None:
    """Create missing topics; retries while the broker is starting."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        admin = kafka.admin(s)
        try:
            await kafka.start(s, admin)
            existing = set(await admin.list_topics())
            missing = [t for t in topics if t not in existing]
            if missing:
                try:
                    await admin.create_topics([new_topic(s, t) for t in missing])
                except TopicAlreadyExistsError:
                    pass
            return
        except KafkaError as e:
            if asyncio.get_running_loop().time() > deadline:
                raise BackendUnavailable(f"could not create topics on {s.kafka.bootstrap}: {e}") from e
            await asyncio.sleep(0.5)
        finally:
            await admin.close()


async def partitions_of(c: AIOKafkaConsumer, topic: str, timeout: float = 15.0) -> list[TopicPartition]:
    """Every partition of ``topic``. A consumer that subscribed to nothing knows no topic's
    partitions until it asks for the cluster's metadata (Tansu answered with all topics
    anyway; Apache Kafka does not), so ask, until a topic just created shows up: reading
    partition 0 alone misses records."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        # what ``c.topics()`` reads, kept: its partitions are what we need (aiokafka has no
        # public call for one unsubscribed topic's partitions)
        cluster = await c._client.fetch_all_metadata()
        parts = cluster.partitions_for_topic(topic)
        # and every partition has a leader: a topic created a moment ago (by another
        # process) may not, and asking its offsets then can hang for the request timeout
        tps = [TopicPartition(topic, p) for p in sorted(parts or ())]
        leaders = [cluster.leader_for_partition(tp) for tp in tps]
        if tps and all(node is not None and node >= 0 for node in leaders):
            return tps
        if asyncio.get_running_loop().time() > deadline:
            raise BackendUnavailable(f"topic {topic} has no partitions on {c._client.hosts}")
        await asyncio.sleep(0.2)


async def read_compacted(s: Settings, topic: str) -> dict[str, bytes | None]:
    """A compacted topic read to its end: the last value per key (None: removed)."""
    c = kafka.consumer(s)
    await kafka.start(s, c)
    out: dict[str, bytes | None] = {}
    try:
        parts = await partitions_of(c, topic)
        c.assign(parts)
        ends = await c.end_offsets(parts)
        # only partitions with records: asking a just-created empty partition for its
        # position can wait ~30 s for its leader (seen on Apache Kafka over SASL_SSL)
        parts = [tp for tp in parts if ends[tp] > 0]
        while [tp for tp in parts if await c.position(tp) < ends[tp]]:
            for recs in (await c.getmany(timeout_ms=500)).values():
                for r in recs:
                    out[(r.key or b"").decode()] = r.value or None
    finally:
        await c.stop()
    return out


async def follow_compacted(s: Settings, topic: str, apply: Callable[[str, bytes | None], None]) -> None:
    """Call ``apply(key, value)`` for every record written to ``topic`` from now on (value None:
    removed); runs until cancelled. Pair with ``read_compacted`` for what came before."""
    c = kafka.consumer(s, fetch_max_wait_ms=max(200, s.kafka.fetch_wait_ms))
    await kafka.start(s, c)
    try:
        parts = await partitions_of(c, topic)
        c.assign(parts)
        await c.seek_to_end(*parts)
        while True:
            try:
                batch = await c.getmany(timeout_ms=500)
            except KafkaError as e:
                log.warning("following %s: %s", topic, e)
                await asyncio.sleep(1)
                continue
            for recs in batch.values():
                for r in recs:
                    apply((r.key or b"").decode(), r.value or None)
    finally:
        with contextlib.suppress(Exception):
            await c.stop()

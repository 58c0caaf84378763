"""Topic names and creation. Every stage creates the topics it touches, so start order is free."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from fabric.errors import BackendUnavailable
from fabric.settings import Settings
from fabric.topics.registry import Registry


def ingest_topic(s: Settings) -> str:
    return s.topic("ingest")


def dlq_topic(s: Settings) -> str:
    return s.topic("dlq")


def typed_topics(s: Settings, registry: Registry) -> list[str]:
    return sorted({s.topic(ct.topic) for ct in registry.context_types.values()})


def all_topics(s: Settings, registry: Registry) -> list[str]:
    return [ingest_topic(s), dlq_topic(s), *typed_topics(s, registry)]


async def ensure_topics(s: Settings, topics: list[str], timeout: float = 30.0) -> None:
    """Create missing topics; retries while the broker is starting."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka.bootstrap, client_id=s.kafka.client_id)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [t for t in topics if t not in existing]
            if missing:
                try:
                    await admin.create_topics([NewTopic(t, s.kafka.partitions, 1) for t in missing])
                except TopicAlreadyExistsError:
                    pass
            return
        except KafkaError as e:
            if asyncio.get_running_loop().time() > deadline:
                raise BackendUnavailable(f"could not create topics on {s.kafka.bootstrap}: {e}") from e
            await asyncio.sleep(0.5)
        finally:
            await admin.close()


async def read_compacted(s: Settings, topic: str) -> dict[str, bytes | None]:
    """A compacted topic read to its end: the last value per key (None: removed)."""
    c = AIOKafkaConsumer(bootstrap_servers=s.kafka.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    out: dict[str, bytes | None] = {}
    try:
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or {0})]
        c.assign(parts)
        ends = await c.end_offsets(parts)
        while [tp for tp in parts if await c.position(tp) < ends[tp]]:
            for recs in (await c.getmany(timeout_ms=500)).values():
                for r in recs:
                    out[(r.key or b"").decode()] = r.value or None
    finally:
        await c.stop()
    return out

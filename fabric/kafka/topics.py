"""Topic names and creation. Every stage creates the topics it touches, so start order is free."""

from __future__ import annotations

import asyncio
import logging

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
TABLES = ("registry", "cep-checkpoints", "workflow-state")


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

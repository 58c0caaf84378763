"""Topic names and creation. Every stage creates the topics it touches, so start order is free."""

from __future__ import annotations

import asyncio

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

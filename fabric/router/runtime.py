"""The router's runtime: every connection and background task a router process holds
(Redis, Kafka producer, change hub, security gate, policy store), opened and closed
together. The HTTP app and ``fabric mcp --stdio`` both run on it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaProducer

from fabric import kafka, redis_clients
from fabric.assembly.store import PolicyStore
from fabric.assembly.store import follower as policy_follower
from fabric.cache.fastredis import FastCluster, FastRedis, Pipelined
from fabric.cache.keys import CacheKeys
from fabric.errors import ConfigError
from fabric.events.catalogue import Catalogue
from fabric.kafka.topics import ensure_topics, ingest_topic
from fabric.pipeline.redact import Redaction
from fabric.registry.store import RegistryFollower, SchemaStore
from fabric.router import bodies
from fabric.router.edge import EdgeValidator
from fabric.router.gate import Gate
from fabric.router.hub import ChangeHub
from fabric.router.state import RouterState, watch_cache
from fabric.security.access import AccessRules
from fabric.security.audit import AuditLog
from fabric.security.ratelimit import RateLimiter
from fabric.security.tokens import TokenVerifier
from fabric.settings import Settings


async def open_gate(settings: Settings, catalogue: Catalogue, fast: Pipelined, producer: AIOKafkaProducer) -> Gate:
    sec = settings.security
    if sec.auth == "off" and settings.router.host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError("security.auth=off is for benchmarks on loopback only; the router listens on "
                          f"{settings.router.host}")  # fmt: skip
    verifier = TokenVerifier(settings)
    await verifier.start()
    rules = AccessRules.load(sec.access_file, list(catalogue.context_types))
    limiter = RateLimiter(fast, settings.redis.key_prefix, sec)
    audit = AuditLog(producer, settings.topic("audit"), sec.audit_buffer)
    return Gate(settings, verifier, rules, limiter, audit)


@contextlib.asynccontextmanager
async def open_state(settings: Settings) -> AsyncIterator[RouterState]:
    """Everything a router needs, started; stopped on exit."""
    catalogue = Catalogue.load(settings.schemas_dir)
    await ensure_topics(settings, [ingest_topic(settings), settings.topic("audit"), settings.topic("registry")])
    # a Redis that stops answering fails requests within the timeout (503), never holds them
    timeout = settings.redis.timeout_s
    redis = redis_clients.connect(settings, max_connections=256, socket_timeout=timeout, socket_connect_timeout=timeout)
    # the hub's blocking reads wait up to its block time: they get their own connections
    hub_redis = redis_clients.connect(settings, socket_timeout=timeout + 1, socket_connect_timeout=timeout)
    producer = kafka.producer(
        settings, client_id=f"{settings.kafka.client_id}-router",
        max_request_size=settings.router.max_body_bytes + 64 * 1024,
        request_timeout_ms=int(settings.router.produce_timeout_s * 1000),
        # not idempotent: aiokafka 0.14's idempotent producer can wedge for good after a
        # request that timed out (every later send: OutOfOrderSequenceException; seen in
        # CI with the broker slowed); a client resends after a 503 anyway
        enable_idempotence=False,
    )  # fmt: skip
    await kafka.start(settings, producer)
    keys = CacheKeys(settings.redis.key_prefix)
    fast: Pipelined = (FastCluster if settings.redis.cluster else FastRedis)(settings.redis.url, timeout)
    gate = await open_gate(settings, catalogue, fast, producer)
    hub = ChangeHub(
        hub_redis, keys, catalogue,
        visible=lambda who, ct, level: who.can_read(ct) and gate.denied_by(who, ct, level) is None,
        buffer=settings.router.subscriber_buffer, buffer_bytes=settings.router.subscriber_buffer_bytes,
        cluster=settings.redis.cluster,
    )  # fmt: skip
    redaction = Redaction(settings, catalogue, settings.worker.processor_options.get("redact", {}))
    validator = EdgeValidator(
        catalogue, settings.max_event_bytes, redaction if "redact" in settings.worker.processors else None
    )
    store = PolicyStore.bundled(settings.security.injection_file)
    policies = policy_follower(settings, store)
    await policies.start()
    follower = RegistryFollower(settings, SchemaStore(catalogue))
    await follower.start()
    state = RouterState(settings, catalogue, redis, keys, producer, hub, validator, fast, gate, store, follower)
    tasks = [asyncio.create_task(watch_cache(state)), asyncio.create_task(policies.run())]
    gate.audit.start()
    bodies.start()
    try:
        yield state
    finally:
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await gate.audit.stop()
        await follower.stop()
        await policies.stop()
        await fast.close()
        await hub.stop()
        await producer.stop()
        await redis.aclose()
        await hub_redis.aclose()
        bodies.shutdown()

"""What every router handler shares: settings, registry, Redis pool, Kafka producer, hub."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from redis.exceptions import RedisError
from starlette.requests import HTTPConnection

from fabric.pipeline.materialize import CacheKeys
from fabric.router.fastredis import FastRedis
from fabric.settings import Settings
from fabric.topics.codecs import TENANT
from fabric.topics.registry import ContextType, Registry

if TYPE_CHECKING:
    from fabric.router.hub import ChangeHub
    from fabric.router.ingest import EdgeValidator

TENANT_HEADER = "x-fabric-tenant"


class HTTPProblem(Exception):
    """An error answered as ``{"error": message}`` with a status code."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass
class RouterState:
    settings: Settings
    registry: Registry
    redis: aioredis.Redis
    keys: CacheKeys
    producer: AIOKafkaProducer
    hub: ChangeHub
    validator: EdgeValidator
    fast: FastRedis
    #: False while the cache is empty after a flush or being rebuilt from Kafka;
    #: refreshed in the background (see ``watch_cache``), so pulls pay nothing for it.
    cache_ready: bool = True


async def watch_cache(state: RouterState, interval: float = 0.25) -> None:
    """Keep ``state.cache_ready`` current: the materializer's ready flag is set and no rebuild runs."""
    log = logging.getLogger(__name__)
    while True:
        try:
            async with state.redis.pipeline(transaction=False) as p:
                p.exists(state.keys.ready)
                p.exists(state.keys.rebuilding)
                ready, rebuilding = await p.execute()
            state.cache_ready = bool(ready) and not rebuilding
        except RedisError as e:
            state.cache_ready = False
            log.debug("cache watch: %s", e)
        await asyncio.sleep(interval)


def state_of(conn: HTTPConnection) -> RouterState:
    state: RouterState = conn.app.state.fabric
    return state


def tenant_of(conn: HTTPConnection) -> str:
    """The caller's tenant. For now from ``X-Fabric-Tenant``; bearer tokens replace it later."""
    return check_tenant(conn.headers.get(TENANT_HEADER))


def check_tenant(tenant: str | None) -> str:
    if not tenant:
        raise HTTPProblem(401, "missing X-Fabric-Tenant header")
    if not TENANT.match(tenant):
        raise HTTPProblem(400, "X-Fabric-Tenant must be 1-64 of A-Z a-z 0-9 _ . - (not starting with _ . -)")
    return tenant


def context_type_named(registry: Registry, name: str) -> ContextType:
    ct = registry.context_types.get(name)
    if ct is None:
        raise HTTPProblem(404, f"unknown context type {name!r} (known: {', '.join(sorted(registry.context_types))})")
    return ct

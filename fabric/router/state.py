"""What every router handler shares: settings, catalogue, Redis pool, Kafka producer, hub."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from redis.exceptions import RedisError
from starlette.requests import HTTPConnection

from fabric.assembly import PolicyStore
from fabric.cache.fastredis import Pipelined
from fabric.cache.keys import CacheKeys
from fabric.events.catalogue import Catalogue, ContextType
from fabric.registry.store import RegistryFollower
from fabric.router.edge import EdgeValidator
from fabric.router.flowshare import FlowShare
from fabric.router.gate import Gate
from fabric.router.hub import ChangeHub
from fabric.router.problems import HTTPProblem
from fabric.router.signin import ConsoleSignIn
from fabric.security.tokens import Principal
from fabric.settings import Settings


@dataclass
class RouterState:
    settings: Settings
    catalogue: Catalogue
    redis: aioredis.Redis
    keys: CacheKeys
    producer: AIOKafkaProducer
    hub: ChangeHub
    validator: EdgeValidator
    fast: Pipelined
    gate: Gate
    #: injection policies (the platform's and each tenant's), see ``fabric.router.assemble``
    policies: PolicyStore
    schemas: RegistryFollower
    #: False while the cache is empty after a flush or being rebuilt from Kafka;
    #: refreshed in the background (see ``watch_cache``), so pulls pay nothing for it.
    cache_ready: bool = True
    #: typed topic -> per partition (complete_ms, reported_ms, caught_up), see ``watermark_lag_ms``
    watermarks: dict[str, list[tuple[int, int, bool]]] = field(default_factory=dict)
    #: the console's sign-in through the configured OIDC issuer (``fabric.router.signin``)
    signin: ConsoleSignIn = field(init=False)
    #: the live flows' shared trail queries and open streams (``fabric.router.flow``)
    trails: FlowShare = field(init=False)

    def __post_init__(self) -> None:
        self.signin = ConsoleSignIn(self.settings.security)
        self.trails = FlowShare()

    def watermark_lag_ms(self, ct: ContextType, now_ms: int | None = None) -> int:
        """How far behind the cache of this context type may be: 0 while the materializer has
        read everything (and said so within 3 s); else the time since the last change it has
        certainly applied, or since it last reported."""
        parts = self.watermarks.get(self.settings.topic(ct.topic))
        if not parts:
            return 0
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        lag = 0
        for complete, reported, caught_up in parts:
            if caught_up and now_ms - reported < 3000:
                continue
            lag = max(lag, now_ms - (reported if caught_up else complete))
        return lag


async def watch_cache(state: RouterState, interval: float = 0.25) -> None:
    """Keep ``state.cache_ready`` current: the materializer's ready flag is set and no rebuild runs."""
    log = logging.getLogger(__name__)
    while True:
        try:
            async with state.redis.pipeline(transaction=False) as p:
                p.exists(state.keys.ready)
                p.exists(state.keys.rebuilding)
                p.hgetall(state.keys.watermarks)
                ready, rebuilding, marks = await p.execute()
            state.cache_ready = bool(ready) and not rebuilding
            state.watermarks = parse_watermarks(marks)
        except RedisError as e:
            state.cache_ready = False
            log.debug("cache watch: %s", e)
        await asyncio.sleep(interval)


def parse_watermarks(marks: dict[bytes, bytes]) -> dict[str, list[tuple[int, int, bool]]]:
    out: dict[str, list[tuple[int, int, bool]]] = {}
    for k, v in marks.items():
        topic = k.decode().rpartition(":")[0]
        complete, reported, caught_up = v.decode().split(",")
        out.setdefault(topic, []).append((int(complete), int(reported), caught_up == "1"))
    return out


def state_of(conn: HTTPConnection) -> RouterState:
    state: RouterState = conn.app.state.fabric
    return state


async def caller(conn: HTTPConnection, action: str, resource: str) -> tuple[Principal, str]:
    """The verified, rate-limited caller of a request and its trace id (see ``Gate``)."""
    return await state_of(conn).gate.admit(
        conn.headers.get("authorization"), conn.headers.get("traceparent"), action, resource
    )


def context_type_named(catalogue: Catalogue, name: str) -> ContextType:
    ct = catalogue.context_types.get(name)
    if ct is None:
        raise HTTPProblem(404, f"unknown context type {name!r} (known: {', '.join(sorted(catalogue.context_types))})")
    return ct

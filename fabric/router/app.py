"""The router: Starlette app factory and ``fabric router`` (uvicorn, uvloop, httptools)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import msgspec
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from fabric.assembly.store import PolicyStore, follow, load_published
from fabric.errors import ConfigError
from fabric.pipeline.materialize import CacheKeys
from fabric.router.assemble import Assembler, assemble, get_policy, list_policies, put_policy
from fabric.router.contexts import list_composites, list_contexts
from fabric.router.fastpath import FastPull
from fabric.router.fastredis import FastRedis
from fabric.router.gate import Gate
from fabric.router.hub import ChangeHub
from fabric.router.ingest import EdgeValidator, post_events
from fabric.router.state import HTTPProblem, RouterState, state_of, watch_cache
from fabric.router.subscribe import subscribe
from fabric.security.access import AccessRules
from fabric.security.audit import AuditLog
from fabric.security.ratelimit import RateLimiter
from fabric.security.tokens import TokenVerifier, dev_jwks
from fabric.settings import Settings
from fabric.topics.admin import ensure_topics, ingest_topic
from fabric.topics.registry import Registry

ERRORS = Counter("fabric_http_errors_total", "HTTP answers with an error status", ["status"])
_enc = msgspec.json.Encoder()


async def problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPProblem)
    ERRORS.labels(str(exc.status)).inc()
    return Response(
        _enc.encode({"error": exc.message}), status_code=exc.status,
        media_type="application/json", headers=exc.headers,
    )  # fmt: skip


async def redis_down(request: Request, exc: Exception) -> Response:
    ERRORS.labels("503").inc()
    return Response(
        _enc.encode({"error": f"the context cache is unavailable: {exc}"}), status_code=503,
        media_type="application/json", headers={"Retry-After": "1"},
    )  # fmt: skip


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> Response:
    st = state_of(request)
    started = time.perf_counter()
    try:
        await st.redis.ping()
        redis_ok = True
    except RedisError:
        redis_ok = False
    body = {
        "status": "ok" if redis_ok else "degraded",
        "redis": redis_ok,
        "redis_ms": round((time.perf_counter() - started) * 1000, 3),
        "cache_ready": st.cache_ready,
    }
    return Response(_enc.encode(body), status_code=200 if redis_ok else 503, media_type="application/json")


async def schema(request: Request) -> Response:
    st = state_of(request)
    name = request.path_params["context_type"]
    if name not in st.registry.context_types:
        raise HTTPProblem(404, f"unknown context type {name!r}")
    return Response(_enc.encode(st.registry.schemas.json_schema(name)), media_type="application/schema+json")


async def open_gate(settings: Settings, registry: Registry, fast: FastRedis, producer: AIOKafkaProducer) -> Gate:
    sec = settings.security
    if sec.auth == "off" and settings.router.host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError("security.auth=off is for benchmarks on loopback only; the router listens on "
                          f"{settings.router.host}")  # fmt: skip
    verifier = TokenVerifier(settings)
    await verifier.start()
    rules = AccessRules.load(sec.access_file, list(registry.context_types))
    limiter = RateLimiter(fast, settings.redis.key_prefix, sec)
    audit = AuditLog(producer, settings.topic("audit"), sec.audit_buffer)
    return Gate(settings, verifier, rules, limiter, audit)


async def jwks(request: Request) -> Response:
    """The dev issuer's public key, so other services (and MCP clients) can verify dev tokens."""
    st = state_of(request)
    if st.settings.security.jwks_url:
        raise HTTPProblem(404, f"tokens are issued by {st.settings.security.issuer}; see its JWKS")
    return Response(_enc.encode(dev_jwks(st.settings)), media_type="application/json")


def create_app(settings: Settings) -> FastPull:
    """Build the router. Redis and Kafka connections open in the lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        registry = Registry.load(settings.schemas_dir)
        await ensure_topics(settings, [ingest_topic(settings), settings.topic("audit"), settings.topic("policies")])
        redis = aioredis.from_url(settings.redis.url, max_connections=256)
        hub_redis = aioredis.from_url(settings.redis.url)
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap, client_id=f"{settings.kafka.client_id}-router",
            linger_ms=2, acks="all", max_request_size=settings.router.max_body_bytes + 64 * 1024,
            request_timeout_ms=int(settings.router.produce_timeout_s * 1000),
        )  # fmt: skip
        await producer.start()
        keys = CacheKeys(settings.redis.key_prefix)
        fast = FastRedis(settings.redis.url)
        gate = await open_gate(settings, registry, fast, producer)
        hub = ChangeHub(
            hub_redis, keys, registry,
            visible=lambda who, ct, level: who.can_read(ct) and gate.denied_by(who, ct, level) is None,
            buffer=settings.router.subscriber_buffer, buffer_bytes=settings.router.subscriber_buffer_bytes,
            hard_limit=settings.router.subscriber_hard_limit,
        )  # fmt: skip
        hub.start()
        validator = EdgeValidator(registry, settings.max_event_bytes)
        store = PolicyStore.bundled(settings.security.injection_file)
        await load_published(settings, store)
        state = RouterState(settings, registry, redis, keys, producer, hub, validator, fast, gate, None)  # type: ignore[arg-type]
        state.assembler = Assembler(state, store)
        app.state.fabric = state
        tasks = [asyncio.create_task(watch_cache(state)), asyncio.create_task(follow(settings, store))]
        gate.audit.start()
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await gate.audit.stop()
            await fast.close()
            await hub.stop()
            await producer.stop()
            await redis.aclose()
            await hub_redis.aclose()

    routes = [
        Route("/v1/contexts/{context_type}", list_contexts, methods=["GET"]),
        Route("/v1/assemble", assemble, methods=["POST"]),
        Route("/v1/policies", list_policies, methods=["GET"]),
        Route("/v1/policies/{name}", get_policy, methods=["GET"]),
        Route("/v1/policies/{name}", put_policy, methods=["PUT"]),
        Route("/.well-known/jwks.json", jwks, methods=["GET"]),
        Route("/v1/schemas/{context_type}", schema, methods=["GET"]),
        Route("/v1/composites", list_composites, methods=["GET"]),
        Route("/v1/events", post_events, methods=["POST"]),
        WebSocketRoute("/v1/subscribe", subscribe),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPProblem: problem, RedisError: redis_down},
    )
    return FastPull(app)


def run_router(settings: Settings) -> None:
    import uvicorn

    uvicorn.run(
        create_app(settings), host=settings.router.host, port=settings.router.port,
        loop="uvloop", http="httptools", ws="websockets-sansio", log_level="warning",
        ws_ping_interval=settings.router.heartbeat_s, ws_ping_timeout=settings.router.ws_ping_timeout_s,
        access_log=False, lifespan="on",
    )  # fmt: skip

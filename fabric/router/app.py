"""The router: Starlette app factory and ``fabric router`` (uvicorn, uvloop, httptools)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from fabric.cache.fastredis import RedisUnavailable
from fabric.router.assemble import assemble, get_policy, list_policies, put_policy
from fabric.router.audit_api import audit_records, audit_report
from fabric.router.console import ROUTES as console_routes
from fabric.router.contexts import list_composites, list_contexts
from fabric.router.fastpath import FrontDoor
from fabric.router.history_api import context_history, events_by_id
from fabric.router.ingest import post_events
from fabric.router.mcp import mcp_http_app
from fabric.router.patterns_api import apply_patterns, list_patterns, remove_pattern
from fabric.router.problems import HTTPProblem
from fabric.router.registry_api import ROUTES as registry_routes
from fabric.router.runtime import open_state
from fabric.router.state import caller, state_of
from fabric.router.subscribe import subscribe
from fabric.router.workflows_api import apply_workflows, list_workflows, remove_workflow, workflow_run, workflow_runs
from fabric.security.tokens import dev_jwks
from fabric.settings import Settings

ERRORS = Counter("fabric_http_errors_total", "HTTP answers with an error status", ["status"])
_enc = msgspec.json.Encoder()


#: the Confluent Schema Catalogue subset answers errors in its own shape
REGISTRY_PATHS = ("/subjects", "/schemas/ids/", "/compatibility/", "/config")


async def problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPProblem)
    ERRORS.labels(str(exc.status)).inc()
    if request.url.path.startswith(REGISTRY_PATHS):
        body = {"error_code": exc.status * 100 + 1, "message": exc.message}
        return Response(
            _enc.encode(body), status_code=exc.status, headers=exc.headers,
            media_type="application/vnd.schemaregistry.v1+json",
        )  # fmt: skip
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
    """A context type's JSON Schema: a registry read, so any valid token of any tenant."""
    st = state_of(request)
    await caller(request, "registry.read", request.url.path)
    name = request.path_params["context_type"]
    if name not in st.catalogue.context_types:
        raise HTTPProblem(404, f"unknown context type {name!r}")
    return Response(_enc.encode(st.catalogue.schemas.json_schema(name)), media_type="application/schema+json")


async def jwks(request: Request) -> Response:
    """The dev issuer's public key, so other services (and MCP clients) can verify dev tokens."""
    st = state_of(request)
    if st.settings.security.jwks_url:
        raise HTTPProblem(404, f"tokens are issued by {st.settings.security.issuer}; see its JWKS")
    return Response(_enc.encode(dev_jwks(st.settings)), media_type="application/json")


def create_app(settings: Settings) -> FrontDoor:
    """Build the router. Redis and Kafka connections open in the lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_state(settings) as state:
            app.state.fabric = state
            async with mcp_server.session_manager.run():
                yield

    mcp_server, mcp_app = mcp_http_app(settings, lambda: app.state.fabric)
    routes = [
        Route("/v1/contexts/{context_type}", list_contexts, methods=["GET"]),
        Route("/v1/history/{context_type}/{subject:path}", context_history, methods=["GET"]),
        Route("/v1/trail", events_by_id, methods=["GET"]),
        Route("/v1/assemble", assemble, methods=["POST"]),
        Route("/v1/policies", list_policies, methods=["GET"]),
        Route("/v1/policies/{name}", get_policy, methods=["GET"]),
        Route("/v1/policies/{name}", put_policy, methods=["PUT"]),
        Route("/.well-known/jwks.json", jwks, methods=["GET"]),
        *registry_routes,
        *console_routes,
        Route("/v1/schemas/{context_type}", schema, methods=["GET"]),
        Route("/v1/composites", list_composites, methods=["GET"]),
        Route("/v1/patterns", list_patterns, methods=["GET"]),
        Route("/v1/patterns", apply_patterns, methods=["POST"]),
        Route("/v1/patterns/{name}", remove_pattern, methods=["DELETE"]),
        Route("/v1/audit", audit_records, methods=["GET"]),
        Route("/v1/audit/report", audit_report, methods=["GET"]),
        Route("/v1/workflows", list_workflows, methods=["GET"]),
        Route("/v1/workflows", apply_workflows, methods=["POST"]),
        Route("/v1/workflows/runs", workflow_runs, methods=["GET"]),
        Route("/v1/workflows/runs/{run_id}", workflow_run, methods=["GET"]),
        Route("/v1/workflows/{name}", remove_workflow, methods=["DELETE"]),
        Route("/v1/events", post_events, methods=["POST"]),
        WebSocketRoute("/v1/subscribe", subscribe),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPProblem: problem, RedisError: redis_down, RedisUnavailable: redis_down},
    )
    return FrontDoor(app, mcp_app)


def run_router(settings: Settings) -> None:
    import uvicorn

    uvicorn.run(
        create_app(settings), host=settings.router.host, port=settings.router.port,
        loop="uvloop", http="httptools", ws="websockets-sansio", log_level="warning",
        ws_ping_interval=settings.router.heartbeat_s, ws_ping_timeout=settings.router.ws_ping_timeout_s,
        ws_max_size=settings.router.ws_max_message_bytes,
        access_log=False, lifespan="on",
    )  # fmt: skip

"""The baseline: the endpoint most people would write first (Starlette, redis-py, json).

Serves the same cached JSON as the fabric's router under ``naive:{tenant}:{type}:{subject}``.
Run as ``uvicorn bench.naive_app:app`` with uvicorn's defaults."""

from __future__ import annotations

import json
import os

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

r = aioredis.from_url(os.environ.get("FABRIC_REDIS__URL", "redis://127.0.0.1:6379/0"))


async def get_context(request: Request) -> JSONResponse:
    tenant = request.headers.get("x-fabric-tenant", "")
    ct, subject = request.path_params["context_type"], request.path_params["subject"]
    value = await r.get(f"naive:{tenant}:{ct}:{subject}")
    if value is None:
        return JSONResponse({"error": "not found"}, status_code=404)
    return JSONResponse(json.loads(value))


app = Starlette(routes=[Route("/v1/contexts/{context_type}/{subject:path}", get_context)])

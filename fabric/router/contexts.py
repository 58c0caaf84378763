"""Listings: ``GET /v1/contexts/{context_type}`` and ``GET /v1/composites``; the response shape
of every pull (the single pull itself is answered in ``fastpath``).

The cached event JSON is spliced into the response as raw bytes (``msgspec.Raw``), so
a pull costs one Redis round trip and no JSON re-encoding of the payload.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from fabric.router.state import HTTPProblem, context_type_named, state_of, tenant_of
from fabric.topics.registry import ContextType


class Context(msgspec.Struct):
    context_type: str
    subject: str
    sequence: int
    as_of: str
    age_ms: int
    stale: bool
    changes: int
    event: msgspec.Raw
    window: list[msgspec.Raw] | None = None


class ContextList(msgspec.Struct):
    context_type: str
    items: list[Context]


_enc = msgspec.json.Encoder()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def freshness(at_ms: int, ct: ContextType, now_ms: int | None = None) -> tuple[str, int, bool]:
    """(as_of, age_ms, stale) of a context whose event time is ``at_ms``."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    age = max(0, now_ms - at_ms)
    return _iso(at_ms), age, bool(ct.ttl_s) and age > ct.ttl_s * 1000


def _context_type(request: Request) -> ContextType:
    return context_type_named(state_of(request).registry, request.path_params["context_type"])


def _build(
    ct: ContextType, subject: str, fields: list[bytes | None], window: list[bytes] | None, ready: bool = True
) -> Context:
    seq, at, v, count = fields
    as_of, age, stale = freshness(int(at or 0), ct)
    return Context(
        context_type=ct.name, subject=subject, sequence=int(seq or 0), as_of=as_of, age_ms=age,
        stale=stale or not ready, changes=int(count or 0), event=msgspec.Raw(v or b"null"),
        window=[msgspec.Raw(w) for w in window] if window is not None else None,
    )  # fmt: skip


def _limit(request: Request) -> int:
    try:
        limit = int(request.query_params.get("limit", "20"))
    except ValueError:
        raise HTTPProblem(400, "limit must be an integer") from None
    if not 1 <= limit <= 1000:
        raise HTTPProblem(400, "limit must be between 1 and 1000")
    return limit


async def list_contexts(request: Request) -> Response:
    tenant = tenant_of(request)
    ct = _context_type(request)
    limit = _limit(request)
    st = state_of(request)
    members: Any = await st.redis.zrevrange(st.keys.recent(tenant, ct.name), 0, limit - 1)
    return await _listing(request, tenant, ct, [s.decode() for s in members])


async def list_composites(request: Request) -> Response:
    """``GET /v1/composites?pattern=&since=&limit=``: the newest composites of the caller's
    tenant, optionally of one pattern and no older than ``since`` (RFC 3339)."""
    tenant = tenant_of(request)
    st = state_of(request)
    ct = st.registry["Composite"]
    limit = _limit(request)
    pattern = request.query_params.get("pattern")
    since = request.query_params.get("since")
    low: str | int = "-inf"
    if since:
        try:
            low = int(datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            raise HTTPProblem(400, f"since must be an RFC 3339 time, got {since!r}") from None
    subjects: list[str] = []
    offset = 0
    key = st.keys.recent(tenant, ct.name)
    while len(subjects) < limit:
        page: Any = await st.redis.zrevrangebyscore(key, "+inf", low, start=offset, num=500)
        if not page:
            break
        offset += len(page)
        subjects += [s.decode() for s in page if not pattern or s.decode().startswith(f"{pattern}/")]
    return await _listing(request, tenant, ct, subjects[:limit])


async def _listing(request: Request, tenant: str, ct: ContextType, subjects: list[str]) -> Response:
    st = state_of(request)
    items: list[Context] = []
    if subjects:
        async with st.redis.pipeline(transaction=False) as p:
            for s in subjects:
                p.hmget(st.keys.ctx(tenant, ct.name, s), "seq", "at", "v", "count")
            rows = await p.execute()
        items = [
            _build(ct, s, f, None, st.cache_ready) for s, f in zip(subjects, rows, strict=True) if f[2] is not None
        ]
    return Response(_enc.encode(ContextList(ct.name, items)), media_type="application/json")

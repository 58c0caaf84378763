"""Listings: ``GET /v1/contexts/{context_type}`` and ``GET /v1/composites``; the response shape
of every pull (the single pull itself is answered in ``fastpath``).

The cached event JSON is spliced into the response as raw bytes (``msgspec.Raw``), so
a pull costs one Redis round trip and no JSON re-encoding of the payload. Contexts the
caller's roles do not clear (access rules on sensitivity) are left out of listings
and windows, as if they were not there.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from fabric.contract import Context, ContextList
from fabric.events.catalogue import ContextType
from fabric.events.envelope import LEVELS
from fabric.events.times import ms_of
from fabric.pipeline.quality import served_quality
from fabric.registry.convert import converter
from fabric.router.freshness import freshness
from fabric.router.problems import HTTPProblem
from fabric.router.state import RouterState, caller, context_type_named, state_of
from fabric.security.tokens import Principal

_enc = msgspec.json.Encoder()


def build_context(
    st: RouterState, who: Principal, ct: ContextType, subject: str, fields: list[bytes | None],
    window: list[bytes] | None,
) -> Context[msgspec.Raw]:  # fmt: skip
    """A pull's answer from the cache hash (seq, at, v, count, sens, q) and, for stream
    types, the window, less the entries the caller may not see."""
    seq, at, v, count, sens, q = fields
    as_of, age, stale = freshness(int(at or 0), ct)
    level = int(sens or 1)
    items = None
    conv = converter(st.schemas.store, who.tenant, who.sub, ct.name) if st.schemas.store.manifests else None
    if window is not None:
        gate = st.gate
        items = [
            msgspec.Raw(conv(w[1:]) if conv else w[1:])
            for w in window
            if gate.denied_by(who, ct.name, w[0] - 48) is None
        ]  # the first byte is the entry's sensitivity digit
    if conv and v:
        v = conv(v)
    return Context(
        context_type=ct.name, subject=subject, sequence=int(seq or 0), as_of=as_of, age_ms=age,
        stale=stale or not st.cache_ready, watermark_lag_ms=st.watermark_lag_ms(ct), sensitivity=LEVELS[level],
        changes=int(count or 0), event=msgspec.Raw(v or b"null"), window=items,
        quality=served_quality(float(q) if q else None, age, ct),
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
    st = state_of(request)
    name = request.path_params["context_type"]
    who, trace = await caller(request, "context.list", name)
    ct = context_type_named(st.catalogue, name)
    st.gate.require_read(who, ct.name, "context.list", ct.name, trace)
    limit = _limit(request)
    members: Any = await st.redis.zrevrange(st.keys.recent(who.tenant, ct.name), 0, limit - 1)
    items = await fetch(st, who, ct, [s.decode() for s in members])
    st.gate.record_allowed(who, "context.list", ct.name, trace, f"{len(items)} items")
    return Response(_enc.encode(ContextList(ct.name, items)), media_type="application/json")


async def list_composites(request: Request) -> Response:
    """``GET /v1/composites?pattern=&since=&limit=``: the newest composites of the caller's
    tenant, optionally of one pattern and no older than ``since`` (RFC 3339)."""
    st = state_of(request)
    pattern = request.query_params.get("pattern")
    resource = f"Composite/{pattern or '*'}"
    who, trace = await caller(request, "composites.list", resource)
    ct = st.catalogue["Composite"]
    st.gate.require_read(who, ct.name, "composites.list", resource, trace)
    limit = _limit(request)
    since = request.query_params.get("since")
    low: str | int = "-inf"
    if since:
        try:
            low = ms_of(since)
        except ValueError:
            raise HTTPProblem(400, f"since must be an RFC 3339 time, got {since!r}") from None
    items = await recent_composites(st, who, pattern, low, limit)
    st.gate.record_allowed(who, "composites.list", resource, trace, f"{len(items)} items")
    return Response(_enc.encode(ContextList(ct.name, items)), media_type="application/json")


async def recent_composites(
    st: RouterState, who: Principal, pattern: str | None, since_ms: str | int, limit: int
) -> list[Context[msgspec.Raw]]:
    ct = st.catalogue["Composite"]
    subjects: list[str] = []
    offset = 0
    key = st.keys.recent(who.tenant, ct.name)
    while len(subjects) < limit:
        page: Any = await st.redis.zrevrangebyscore(key, "+inf", since_ms, start=offset, num=500)
        if not page:
            break
        offset += len(page)
        subjects += [s.decode() for s in page if not pattern or s.decode().startswith(f"{pattern}/")]
    return await fetch(st, who, ct, subjects[:limit])


async def fetch(st: RouterState, who: Principal, ct: ContextType, subjects: list[str]) -> list[Context[msgspec.Raw]]:
    """The contexts of these subjects in the caller's tenant that exist and the caller may see."""
    if not subjects:
        return []
    async with st.redis.pipeline(transaction=False) as p:
        for s in subjects:
            p.hmget(st.keys.ctx(who.tenant, ct.name, s), "seq", "at", "v", "count", "sens", "q")
        rows = await p.execute()
    return [
        build_context(st, who, ct, s, f, None)
        for s, f in zip(subjects, rows, strict=True)
        if f[2] is not None and st.gate.denied_by(who, ct.name, int(f[4] or 1)) is None
    ]

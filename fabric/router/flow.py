"""``GET /v1/console/flow``: the live flow of the caller's tenant, as server-sent events.

Every ``INTERVAL_S`` one ``data:`` line carries a snapshot:

- ``rates``: events per second by type and source over the last minute, and a sparkline
  (events per 5 s) per type, from the raw trail in ClickHouse (``fabric.events``);
- ``dlq``: the tenant's dead letters in the last minute and the latest reasons
  (``fabric.dlq``; a record whose tenant cannot be read is shown to nobody);
- ``freshness``: per context type the caller may read, the newest context's age and
  watermark lag (from the cache);
- ``subscriptions``: the tenant's open push subscriptions on this router.

The stream needs scope ``audit:read`` (it describes traffic, as the audit trail does) or
``admin``, and ends when the token expires. A snapshot the trail cannot give (the sink is
down) says so in ``error`` and the stream goes on.

What comes from the trail is the tenant's, whoever asks: it is queried once per interval per
tenant and shared by every stream of that tenant on this router, so more viewers do not
mean more queries; a tenant has at most ``MAX_STREAMS`` streams open on a router (429 past
that).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import StreamingResponse

from fabric.errors import FabricError
from fabric.events.codecs import TENANT
from fabric.router.contexts import fetch
from fabric.router.flowshare import INTERVAL_S, MAX_STREAMS
from fabric.router.problems import HTTPProblem
from fabric.router.state import RouterState, caller, state_of
from fabric.security.tokens import Principal
from fabric.sinks.query import query

WINDOW_S = 60
BUCKET_S = 5
_enc = msgspec.json.Encoder()


def flow_sql(database: str, tenant: str) -> dict[str, str]:
    """The snapshot's queries (the tenant is checked: it is written into the SQL)."""
    if not TENANT.fullmatch(tenant):
        raise FabricError(f"invalid tenant {tenant[:70]!r}")
    since = f"now64(3) - INTERVAL {WINDOW_S} SECOND"
    return {
        "rates": f"SELECT type, source, count() AS n FROM {database}.events WHERE tenant = '{tenant}' "
        f"AND received >= {since} GROUP BY type, source ORDER BY n DESC LIMIT 50",
        "buckets": f"SELECT type, intDiv(toUInt32(dateDiff('second', received, now64(3))), {BUCKET_S}) AS ago, "
        f"count() AS n FROM {database}.events WHERE tenant = '{tenant}' AND received >= {since} "
        "GROUP BY type, ago LIMIT 2000",
        "dlq": f"SELECT reason, toString(failed_at) AS at FROM {database}.dlq "
        f"WHERE JSONExtractString(original, 'tenant') = '{tenant}' AND failed_at >= {since} "
        "ORDER BY failed_at DESC LIMIT 100",
    }


async def _rows(st: RouterState, sql: str) -> list[list[Any]]:
    _, rows = await asyncio.to_thread(query, st.settings, sql, False)
    return rows


async def _trail(st: RouterState, tenant: str) -> dict[str, Any]:
    out: dict[str, Any] = {"error": ""}
    try:
        q = flow_sql(st.settings.clickhouse.database, tenant)
        rates, buckets, dlq = await asyncio.gather(*(_rows(st, q[k]) for k in ("rates", "buckets", "dlq")))
        out["rates"] = [{"type": t, "source": s, "per_s": round(n / WINDOW_S, 2), "count": n} for t, s, n in rates]
        lines: dict[str, list[int]] = {}
        for t, ago, n in buckets:
            line = lines.setdefault(t, [0] * (WINDOW_S // BUCKET_S))
            if 0 <= ago < len(line):
                line[len(line) - 1 - ago] = n  # oldest first
        out["sparklines"] = lines
        out["dlq"] = {"count": len(dlq), "per_s": round(len(dlq) / WINDOW_S, 2),
                      "latest": [{"reason": r[:300], "at": a} for r, a in dlq[:5]]}  # fmt: skip
    except FabricError as e:  # the sink (and its trail) is away: say so, keep the rest
        out |= {"rates": [], "sparklines": {}, "dlq": {"count": 0, "per_s": 0, "latest": []}, "error": str(e)}
    return out


async def snapshot(st: RouterState, who: Principal) -> dict[str, Any]:
    trail = await asyncio.shield(st.trails.of(who.tenant, lambda: _trail(st, who.tenant)))
    out: dict[str, Any] = {"at": time.time(), "window_s": WINDOW_S, "bucket_s": BUCKET_S, **trail}
    fresh = []
    for name, ct in sorted(st.catalogue.context_types.items()):
        if not who.can_read(name):
            continue
        newest: Any = await st.redis.zrevrange(st.keys.recent(who.tenant, name), 0, 0)
        got = await fetch(st, who, ct, [s.decode() for s in newest])
        if got:
            c = got[0]
            fresh.append({"context_type": name, "subject": c.subject, "age_ms": c.age_ms, "stale": c.stale,
                          "watermark_lag_ms": c.watermark_lag_ms})  # fmt: skip
    out["freshness"] = fresh
    out["subscriptions"] = len(st.hub.tenants.get(who.tenant, ()))
    return out


async def flow(request: Request) -> StreamingResponse:
    st = state_of(request)
    who, trace = await caller(request, "console.flow", "flow")
    if not who.can("audit:read"):
        raise st.gate.forbid(who, "console.flow", "flow", trace, "the token lacks scope 'audit:read'")
    if st.trails.full(who.tenant):
        raise HTTPProblem(429, f"the tenant has {MAX_STREAMS} live flows open on this router already",
                          {"Retry-After": "10"})  # fmt: skip
    st.gate.record_allowed(who, "console.flow", "flow", trace)

    async def frames() -> AsyncIterator[bytes]:
        # counted here, where the count is sure to be given back (a response that never
        # starts never runs this)
        if not st.trails.opened(who.tenant):
            yield b"event: end\ndata: " + _enc.encode({"error": f"over {MAX_STREAMS} live flows"}) + b"\n\n"
            return
        try:
            while time.time() < who.expires and not await request.is_disconnected():
                yield b"data: " + _enc.encode(await snapshot(st, who)) + b"\n\n"
                await asyncio.sleep(INTERVAL_S)
            yield b"event: end\ndata: {}\n\n"
        finally:
            st.trails.closed(who.tenant)

    return StreamingResponse(frames(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})  # fmt: skip

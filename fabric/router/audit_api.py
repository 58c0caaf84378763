"""``GET /v1/audit`` and ``GET /v1/audit/report``: a tenant's own audit trail, for its
security team, without shell access (scope ``audit:read``; the tenant is the token's).

``/v1/audit?since=1h&decision=deny&action=context.read&limit=100`` -> ``{"records": [...]}``,
newest first; ``/v1/audit/report?since=30d`` -> counts by action and decision, denials by
reason, top subjects (what ``fabric audit report`` prints). 503 while the audit store
cannot be read.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from fabric.errors import BackendUnavailable, FabricError
from fabric.router.problems import HTTPProblem
from fabric.router.state import caller, state_of
from fabric.security.trail import records_sql, report_sql
from fabric.sinks.query import query

_enc = msgspec.json.Encoder()


async def store_rows(request: Request, sql: str, what: str = "the audit store") -> list[dict[str, Any]]:
    """Rows of a ClickHouse query as dicts (503 while ``what`` cannot be read)."""
    st = state_of(request)
    try:
        cols, rows = await asyncio.to_thread(query, st.settings, sql, False)
    except BackendUnavailable as e:
        raise HTTPProblem(503, f"{what} is unavailable: {e}", {"Retry-After": "5"}) from None
    except FabricError as e:
        raise HTTPProblem(503, f"{what} did not answer: {e}", {"Retry-After": "5"}) from None
    return [dict(zip(cols, (str(v) if not isinstance(v, int | float | str) else v for v in r), strict=True))
            for r in rows]  # fmt: skip


async def audit_records(request: Request) -> Response:
    st = state_of(request)
    who, trace = await caller(request, "audit.read", "audit")
    st.gate.require(who, "audit:read", "audit.read", "audit", trace)
    q = request.query_params
    try:
        limit = int(q.get("limit", "100"))
        sql = records_sql(st.settings.clickhouse.database, who.tenant, q.get("since", "1h"), q.get("decision"),
                          q.get("action"), limit)  # fmt: skip
    except ValueError:
        raise HTTPProblem(400, "limit must be a number") from None
    except FabricError as e:
        raise HTTPProblem(400, str(e)) from None
    records = await store_rows(request, sql)
    st.gate.record_allowed(who, "audit.read", "audit", trace, f"{len(records)} records")
    return Response(_enc.encode({"records": records}), media_type="application/json")


async def audit_report(request: Request) -> Response:
    st = state_of(request)
    who, trace = await caller(request, "audit.read", "audit/report")
    st.gate.require(who, "audit:read", "audit.read", "audit/report", trace)
    since = request.query_params.get("since", "30d")
    try:
        parts = report_sql(st.settings.clickhouse.database, who.tenant, since)
    except FabricError as e:
        raise HTTPProblem(400, str(e)) from None
    out: dict[str, Any] = {"tenant": who.tenant, "since": since}
    for name, sql in parts.items():
        out[name] = await store_rows(request, sql)
    st.gate.record_allowed(who, "audit.read", "audit/report", trace)
    return Response(_enc.encode(out), media_type="application/json")

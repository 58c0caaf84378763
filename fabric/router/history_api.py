"""``GET /v1/history/{context_type}/{subject}``: a subject's versions as the raw trail in
ClickHouse has them, newest first (the cache holds only the latest, or a stream type's
window).

``/v1/history/PageDSL/orders-list?limit=20`` -> ``{"context_type", "subject", "versions":
[{"id", "type", "source", "time", "received", "sequence", "sensitivity", "provider",
"data", "data_bytes"}, ...]}``; a version's data over ``MAX_DATA`` bytes is left out (``"data":
null``, its size in ``data_bytes``: pull the subject for the latest), so an answer stays
small whatever was sent. The caller needs ``context:read:<type>``; versions its roles do not clear
(access rules on sensitivity) are left out, as in every pull. 503 while the store cannot
be read. The subject goes into the SQL as hex, so no subject can change the statement.

``GET /v1/trail?ids=ID,ID,...``: which context each event (a composite's contributors, say)
belongs to: ``{"events": [{"id", "type", "context_type", "subject", "time", "sensitivity"}]}``,
the tenant's only, of the types the caller may read and the sensitivities it clears; at most
``MAX_IDS`` ids.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
from starlette.requests import Request
from starlette.responses import Response

from fabric.errors import FabricError
from fabric.events.codecs import TENANT
from fabric.events.envelope import LEVEL
from fabric.router.audit_api import store_rows
from fabric.router.problems import HTTPProblem
from fabric.router.state import caller, context_type_named, state_of

MAX_SUBJECT = 1024
MAX_IDS = 50
MAX_VERSIONS = 100
MAX_DATA = 16 * 1024
COLUMNS = ("id, type, source, time, received, sequence, sensitivity, provider, "
           f"if(length(data) > {MAX_DATA}, '', data) AS payload, length(data) AS data_bytes")  # fmt: skip
_enc = msgspec.json.Encoder()


def history_sql(database: str, tenant: str, context_type: str, subject: str, limit: int) -> str:
    """The newest ``limit`` versions of one subject (``context_type`` is a known type's name)."""
    if not TENANT.fullmatch(tenant):
        raise FabricError(f"invalid tenant {tenant[:70]!r}")
    if not context_type.isidentifier():
        raise FabricError(f"invalid context type {context_type[:70]!r}")
    where = (f"tenant = '{tenant}' AND context_type = '{context_type}' "
             f"AND subject = unhex('{subject.encode().hex()}')")  # fmt: skip
    return (
        f"SELECT {COLUMNS} FROM {database}.events FINAL WHERE {where} ORDER BY sequence DESC, time DESC LIMIT {limit}"
    )


def trail_sql(database: str, tenant: str, ids: list[str]) -> str:
    if not TENANT.fullmatch(tenant):
        raise FabricError(f"invalid tenant {tenant[:70]!r}")
    wanted = ", ".join(f"unhex('{i.encode().hex()}')" for i in ids)
    return (f"SELECT DISTINCT id, type, context_type, subject, toString(time) AS time, sensitivity "
            f"FROM {database}.events WHERE tenant = '{tenant}' AND id IN ({wanted}) LIMIT {len(ids) * 4}")  # fmt: skip


async def events_by_id(request: Request) -> Response:
    st = state_of(request)
    who, trace = await caller(request, "trail.read", "trail")
    ids = [i for i in request.query_params.get("ids", "").split(",") if i]
    if not ids or len(ids) > MAX_IDS or any(len(i) > 200 for i in ids):
        raise HTTPProblem(400, f"ids: 1 to {MAX_IDS} event ids of at most 200 characters, comma-separated")
    rows = await store_rows(request, trail_sql(st.settings.clickhouse.database, who.tenant, ids), "the event trail")
    events = [
        r for r in rows
        if who.can_read(str(r["context_type"]))
        and st.gate.denied_by(who, str(r["context_type"]), LEVEL.get(str(r["sensitivity"]), 3)) is None
    ]  # fmt: skip
    st.gate.record_allowed(who, "trail.read", "trail", trace, f"{len(events)} of {len(ids)} events")
    return Response(_enc.encode({"events": events}), media_type="application/json")


def _version(row: dict[str, Any]) -> dict[str, Any]:
    payload = row.pop("payload")
    try:
        row["data"] = orjson.loads(payload) if payload else None
    except orjson.JSONDecodeError:
        row["data"] = payload  # the text the trail has
    if row.get("provider") == "None":
        row["provider"] = None
    return row


async def context_history(request: Request) -> Response:
    st = state_of(request)
    name, subject = request.path_params["context_type"], request.path_params["subject"]
    resource = f"{name[:40]}/{subject[:200]}"
    who, trace = await caller(request, "context.history", resource)
    ct = context_type_named(st.catalogue, name)
    st.gate.require_read(who, ct.name, "context.history", resource, trace)
    if not subject or len(subject) > MAX_SUBJECT:
        raise HTTPProblem(400, f"a subject is 1 to {MAX_SUBJECT} characters")
    try:
        limit = int(request.query_params.get("limit", "20"))
    except ValueError:
        raise HTTPProblem(400, "limit must be an integer") from None
    if not 1 <= limit <= MAX_VERSIONS:
        raise HTTPProblem(400, f"limit must be between 1 and {MAX_VERSIONS}")
    rows = await store_rows(request, history_sql(st.settings.clickhouse.database, who.tenant, ct.name, subject, limit),
                            "the event trail")  # fmt: skip
    versions = [
        _version(r) for r in rows if st.gate.denied_by(who, ct.name, LEVEL.get(str(r["sensitivity"]), 3)) is None
    ]
    st.gate.record_allowed(who, "context.history", resource, trace, f"{len(versions)} versions")
    body = {"context_type": ct.name, "subject": subject, "versions": versions}
    return Response(_enc.encode(body), media_type="application/json")

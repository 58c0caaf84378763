"""Reading the audit trail: the SQL behind ``fabric audit``, ``fabric audit report``,
``GET /v1/audit`` and ``GET /v1/audit/report``, built from checked values only (the
tenant comes from the token or a checked name, times are parsed, the rest are enums
and bounded numbers), so no caller's text ever reaches the SQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from fabric.errors import FabricError
from fabric.events.codecs import TENANT
from fabric.events.times import parse_rfc3339

_AGO = re.compile(r"(\d{1,6})([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
ACTION = re.compile(r"[a-z][a-z0-9_.]{0,63}")
COLUMNS = "time, subject, action, resource, decision, reason, trace_id"


def since_time(since: str, now: datetime | None = None) -> datetime:
    """``15m``/``2h``/``7d`` ago, or an RFC 3339 time."""
    now = now or datetime.now(UTC)
    m = _AGO.fullmatch(since)
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        return parse_rfc3339(since)
    except ValueError:
        raise FabricError(f"since must be like 15m, 2h, 7d or an RFC 3339 time, got {since[:40]!r}") from None


def _where(database: str, tenant: str, since: str, decision: str | None = None, action: str | None = None) -> str:
    if not TENANT.fullmatch(tenant):
        raise FabricError(f"invalid tenant {tenant[:70]!r}")
    t = since_time(since).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    where = f"FROM {database}.audit FINAL WHERE tenant = '{tenant}' AND time >= toDateTime64('{t}', 3, 'UTC')"
    if decision is not None:
        if decision not in ("allow", "deny"):
            raise FabricError(f"decision must be allow or deny, got {decision[:20]!r}")
        where += f" AND decision = '{decision}'"
    if action is not None:
        if not ACTION.fullmatch(action):
            raise FabricError(f"action must be like context.read, got {action[:70]!r}")
        where += f" AND action = '{action}'"
    return where


def records_sql(
    database: str, tenant: str, since: str, decision: str | None = None, action: str | None = None, limit: int = 100
) -> str:
    """The newest records of one tenant."""
    limit = max(1, min(10_000, int(limit)))
    return f"SELECT {COLUMNS} {_where(database, tenant, since, decision, action)} ORDER BY time DESC, seq DESC LIMIT {limit}"


def report_sql(database: str, tenant: str, since: str) -> dict[str, str]:
    """The compliance summary's parts: counts by action and decision, denials by reason,
    the subjects (token ``sub``) with the most requests and their denials."""
    w = _where(database, tenant, since)
    return {
        "by_action": f"SELECT action, decision, count() AS n {w} GROUP BY action, decision ORDER BY n DESC",
        "denials_by_reason": f"SELECT reason, count() AS n {w} AND decision = 'deny' GROUP BY reason "
        "ORDER BY n DESC LIMIT 50",
        "top_subjects": f"SELECT subject, count() AS n, countIf(decision = 'deny') AS denied {w} GROUP BY subject "
        "ORDER BY n DESC LIMIT 20",
    }

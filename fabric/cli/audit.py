"""``fabric audit --tenant T --since 1h``: the audit trail from ClickHouse's ``audit`` table."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click

from fabric.cli.main import settings_of
from fabric.errors import FabricError
from fabric.sinks.query import query as run
from fabric.topics.codecs import TENANT

_AGO = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def since_time(since: str, now: datetime | None = None) -> datetime:
    """``15m``/``2h``/``7d`` ago, or an RFC 3339 time."""
    now = now or datetime.now(UTC)
    m = _AGO.match(since)
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        t = datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        raise FabricError(f"--since must be like 15m, 2h, 7d or an RFC 3339 time, got {since!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@click.command(help="Show audit records (who did what, allowed or denied) from ClickHouse.")
@click.option("--tenant", required=True, help="The tenant whose trail to show.")
@click.option("--since", default="1h", show_default=True, help="15m, 2h, 7d, or an RFC 3339 time.")
@click.option("--decision", type=click.Choice(["allow", "deny"]), help="Only allowed or only denied requests.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def audit(ctx: click.Context, tenant: str, since: str, decision: str | None, limit: int, as_json: bool) -> None:
    if not TENANT.match(tenant):
        raise FabricError(f"invalid tenant {tenant!r}")
    s = settings_of(ctx)
    t = since_time(since).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    where = f"tenant = '{tenant}' AND time >= toDateTime64('{t}', 3, 'UTC')"
    if decision:
        where += f" AND decision = '{decision}'"
    sql = (f"SELECT time, subject, action, resource, decision, reason, trace_id FROM {s.clickhouse.database}.audit "
           f"FINAL WHERE {where} ORDER BY time DESC, seq DESC LIMIT {int(limit)}")  # fmt: skip
    cols, rows = run(s, sql)
    if as_json:
        import json

        for r in rows:
            click.echo(json.dumps(dict(zip(cols, r, strict=True)), default=str))
        return
    for r in rows:
        when, sub, action, resource, dec, reason, trace = r
        click.echo(f"{when}  {dec:<5}  {sub:<16} {action:<18} {resource[:50]:<50} {reason}  {trace[:8]}")
    click.echo(f"({len(rows)} record{'s' if len(rows) != 1 else ''})")

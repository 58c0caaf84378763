"""``fabric audit --tenant T --since 1h``: the audit trail from ClickHouse's ``audit`` table."""

from __future__ import annotations

import json

import click

from fabric.cli.common import settings_of
from fabric.errors import FabricError
from fabric.security.trail import records_sql, report_sql
from fabric.sinks.query import query as run


@click.group(
    invoke_without_command=True,
    help="Show audit records (who did what, allowed or denied) from ClickHouse; 'report' summarises them.",
)
@click.option("--tenant", help="The tenant whose trail to show.")
@click.option("--since", default="1h", show_default=True, help="15m, 2h, 7d, or an RFC 3339 time.")
@click.option("--decision", type=click.Choice(["allow", "deny"]), help="Only allowed or only denied requests.")
@click.option("--action", help="Only this action (context.read, events.write, registry.write, ...).")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def audit(
    ctx: click.Context, tenant: str | None, since: str, decision: str | None, action: str | None, limit: int,
    as_json: bool,
) -> None:  # fmt: skip
    if ctx.invoked_subcommand is not None:
        return
    if not tenant:
        raise FabricError("give --tenant T")
    s = settings_of(ctx)
    cols, rows = run(s, records_sql(s.clickhouse.database, tenant, since, decision, action, limit))
    if as_json:
        for r in rows:
            click.echo(json.dumps(dict(zip(cols, r, strict=True)), default=str))
        return
    for r in rows:
        when, sub, act, resource, dec, reason, trace = r
        click.echo(f"{when}  {dec:<5}  {sub:<16} {act:<18} {resource[:50]:<50} {reason}  {trace[:8]}")
    click.echo(f"({len(rows)} record{'s' if len(rows) != 1 else ''})")


@audit.command(help="A compliance summary: counts by action and decision, denials by reason, top subjects.")
@click.option("--tenant", required=True, help="The tenant to report on.")
@click.option("--since", default="30d", show_default=True, help="15m, 2h, 30d, or an RFC 3339 time.")
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON document.")
@click.pass_context
def report(ctx: click.Context, tenant: str, since: str, as_json: bool) -> None:
    s = settings_of(ctx)
    out = {}
    for part, sql in report_sql(s.clickhouse.database, tenant, since).items():
        cols, rows = run(s, sql)
        out[part] = [dict(zip(cols, r, strict=True)) for r in rows]
    if as_json:
        click.echo(json.dumps({"tenant": tenant, "since": since, **out}, default=str))
        return
    click.echo(f"audit report for {tenant} since {since}")
    click.echo("\nrequests by action and decision")
    for r in out["by_action"]:
        click.echo(f"  {r['action']:<28} {r['decision']:<6} {r['n']:>10}")
    click.echo("\ndenials by reason")
    for r in out["denials_by_reason"] or [{"reason": "(none)", "n": 0}]:
        click.echo(f"  {r['n']:>10}  {r['reason']}")
    click.echo("\ntop subjects (requests, of which denied)")
    for r in out["top_subjects"]:
        click.echo(f"  {r['subject'] or '(no token)':<40} {r['n']:>10} {r['denied']:>8}")

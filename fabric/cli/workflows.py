"""``fabric workflows apply FILE | list | remove NAME | runs | show RUN`` and
``fabric systems register FILE | list | discover ID | remove ID``: reactions, per tenant, changed while
the worker runs.

Workflows live in the registry topic as ``workflow:<tenant>/<name>`` (the workflow as
written, with its version), target systems as ``system:<tenant>/<id>``. A file is checked
before anything is published; an error names the workflow and the field."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import orjson
import yaml

from fabric.cli.common import settings_of
from fabric.errors import ConfigError, FabricError
from fabric.kafka.compacted import publish, read_compacted
from fabric.kafka.topics import ensure_topics
from fabric.settings import Settings
from fabric.sinks.query import query as run_query
from fabric.specs import load_yaml
from fabric.workflows.discover import check_steps, list_tools
from fabric.workflows.queries import run_sql, runs_sql
from fabric.workflows.source import WORKFLOW
from fabric.workflows.spec import compile_workflow, read_workflows, unregistered_systems, version_conflict
from fabric.workflows.stage import reach_of
from fabric.workflows.systems import SYSTEM, parse_system

TENANT = click.option("--tenant", required=True, help="The tenant the workflows or systems belong to.")


async def _records(s: Settings, prefix: str) -> dict[str, Any]:
    await ensure_topics(s, [s.topic("registry")])
    records = await read_compacted(s, s.topic("registry"))
    return {k.removeprefix(prefix): orjson.loads(v) for k, v in records.items() if v and k.startswith(prefix)}


def _publish(s: Settings, items: list[tuple[str, bytes | None]]) -> None:
    asyncio.run(publish(s, s.topic("registry"), [(k.encode(), v) for k, v in items]))


@click.group(help="Add, change or remove a tenant's workflows while the worker runs; see their runs.")
def workflows() -> None:
    pass


@workflows.command(help="Check FILE and publish its workflows for the tenant.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@TENANT
@click.pass_context
def apply(ctx: click.Context, file: Path, tenant: str) -> None:
    s = settings_of(ctx)
    checked = read_workflows(file.read_text(), str(file))  # raises WorkflowError naming the field
    applied = asyncio.run(_records(s, f"{WORKFLOW}{tenant}/"))
    systems = asyncio.run(_records(s, f"{SYSTEM}{tenant}/"))
    items: list[tuple[str, bytes | None]] = []
    for wf, doc in checked:
        conflict = version_conflict(applied.get(wf.name), wf, doc)
        if conflict:
            raise ConfigError(conflict)
        for warning in unregistered_systems(wf, systems):
            click.echo(f"warning: {warning} for {tenant} (fabric systems register)", err=True)
        items.append((f"{WORKFLOW}{tenant}/{wf.name}", orjson.dumps(doc)))
    _publish(s, items)
    for wf, _ in checked:
        click.echo(f"applied {tenant}/{wf.name} v{wf.spec.version}")


@workflows.command(help="Remove the tenant's workflow NAME (runs in progress finish).")
@click.argument("name")
@TENANT
@click.pass_context
def remove(ctx: click.Context, name: str, tenant: str) -> None:
    _publish(settings_of(ctx), [(f"{WORKFLOW}{tenant}/{name}", None)])
    click.echo(f"removed {tenant}/{name}")


@workflows.command(name="list", help="The tenant's workflows.")
@TENANT
@click.pass_context
def list_(ctx: click.Context, tenant: str) -> None:
    for name, doc in sorted(asyncio.run(_records(settings_of(ctx), f"{WORKFLOW}{tenant}/")).items()):
        triggers = ", ".join(t.get("event", "?") for t in doc.get("triggers", []))
        click.echo(f"{name:<32} v{doc.get('version', 1):<4} {len(doc.get('phases', []))} phases  on {triggers}")


@workflows.command(help="The tenant's recent runs (from ClickHouse).")
@TENANT
@click.option("--since", default="1d", show_default=True, help="15m, 2h, 7d, or an RFC 3339 time.")
@click.option("--workflow", default=None, help="Only this workflow's runs.")
@click.option("--status", default=None, help="running, compensating, succeeded or failed.")
@click.option("--limit", default=50, show_default=True)
@click.pass_context
def runs(ctx: click.Context, tenant: str, since: str, workflow: str | None, status: str | None, limit: int) -> None:
    s = settings_of(ctx)
    _, rows = run_query(s, runs_sql(s.clickhouse.database, tenant, since, workflow, status, limit))
    for r in rows:
        rid, wf, version, st, reason, _tid, ttype, started, _ended, _phases = r
        click.echo(f"{rid}  {str(started)[:23]:<23}  {wf}@{version:<3} {st:<12} {ttype:<28} {reason[:60]}")
    click.echo(f"({len(rows)} run{'s' if len(rows) != 1 else ''})")


def _ms(v: Any) -> float:
    if isinstance(v, datetime):
        return v.timestamp() * 1000
    return datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp() * 1000


@workflows.command(help="One run: its phases and a timeline of its step attempts.")
@click.argument("run_id")
@TENANT
@click.option("--json", "as_json", is_flag=True, help="The run and its steps as one JSON document.")
@click.pass_context
def show(ctx: click.Context, run_id: str, tenant: str, as_json: bool) -> None:
    s = settings_of(ctx)
    run_q, steps_q = run_sql(s.clickhouse.database, tenant, run_id)
    cols, rows = run_query(s, run_q)
    if not rows:
        raise FabricError(f"no run {run_id} of tenant {tenant} (runs reach ClickHouse within a few seconds)")
    run = dict(zip(cols, rows[0], strict=True))
    scols, srows = run_query(s, steps_q)
    steps = [dict(zip(scols, r, strict=True)) for r in srows]
    if as_json:
        click.echo(json.dumps({"run": run, "steps": steps}, default=str))
        return
    click.echo(f"{run['workflow']}@{run['version']}  run {run_id}  {run['status']}  trigger {run['trigger_type']} "
               f"{run['trigger_id']}")  # fmt: skip
    if run["reason"]:
        click.echo(f"reason: {run['reason']}")
    if not steps:
        return
    t0 = min(_ms(st["started"]) for st in steps)
    span = max(max(_ms(st["ended"]) for st in steps) - t0, 1.0)
    width = 40
    for st in steps:
        a, b = _ms(st["started"]) - t0, _ms(st["ended"]) - t0
        lo = int(a / span * width)
        bar = " " * lo + "█" * max(1, int((b - a) / span * width))
        click.echo(f"{st['phase'][:12]:<12} {st['step'][:16]:<16} #{st['attempt']:<2} {st['outcome']:<19} "
                   f"+{a:7.0f} ms {b - a:6.0f} ms |{bar:<{width}}| {st['error'][:50]}")  # fmt: skip


@click.group(help="Register a tenant's target systems (endpoint, auth, security level) for workflows.")
def systems() -> None:
    pass


@systems.command(help="Check FILE ({system: {...}}) and register it for the tenant.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@TENANT
@click.pass_context
def register(ctx: click.Context, file: Path, tenant: str) -> None:
    try:
        doc = load_yaml(file.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{file}: not YAML: {e}") from None
    system = parse_system(doc, tenant, str(file))
    _publish(settings_of(ctx), [(system.key, orjson.dumps(doc))])
    click.echo(f"registered {tenant}/{system.id} ({system.spec.kind} {system.spec.endpoint}, "
               f"security level {system.spec.security_level})")  # fmt: skip


@systems.command(name="list", help="The tenant's systems.")
@TENANT
@click.pass_context
def systems_list(ctx: click.Context, tenant: str) -> None:
    for sid, doc in sorted(asyncio.run(_records(settings_of(ctx), f"{SYSTEM}{tenant}/")).items()):
        spec = doc.get("system", {})
        click.echo(f"{sid:<24} {spec.get('kind', 'http'):<5} {spec.get('security_level', 'internal'):<13} "
                   f"{spec.get('endpoint', '')}")  # fmt: skip


@systems.command(
    help="List the tools of the tenant's MCP system ID and check every workflow step that calls it "
    "against the tool's input schema (exit 1 when one does not fit)."
)
@click.argument("system_id")
@TENANT
@click.pass_context
def discover(ctx: click.Context, system_id: str, tenant: str) -> None:
    s = settings_of(ctx)
    doc = asyncio.run(_records(s, f"{SYSTEM}{tenant}/")).get(system_id)
    if doc is None:
        raise ConfigError(f"no system {system_id!r} is registered for tenant {tenant!r} (fabric systems list)")
    system = parse_system(doc, tenant, f"system {system_id}")
    if system.spec.kind != "mcp":
        raise ConfigError(f"system {system_id!r} is an {system.spec.kind} system; only MCP systems list tools")
    tools = asyncio.run(list_tools(system, reach_of(s)))
    for t in tools:
        props = t.input_schema.get("properties", {}) or {}
        required = set(t.input_schema.get("required", []) or [])
        args = ", ".join(f"{n}{'' if n in required else '?'}: {p.get('type', 'any')}" for n, p in props.items())
        click.echo(f"{t.name}({args})  {t.description.splitlines()[0] if t.description else ''}")
    workflows = [compile_workflow(d) for d in asyncio.run(_records(s, f"{WORKFLOW}{tenant}/")).values()]
    problems = check_steps(workflows, system_id, tools)
    for p in problems:
        click.echo(f"error: {p}", err=True)
    calls = sum(1 for wf in workflows for ph in wf.spec.phases for st in ph.steps if st.system == system_id)
    click.echo(f"{len(tools)} tools; {calls} workflow steps call {system_id}; "
               f"{len(problems) or 'no'} problem{'s' if len(problems) != 1 else ''}")  # fmt: skip
    if problems:
        ctx.exit(1)


@systems.command(name="remove", help="Remove the tenant's system ID.")
@click.argument("system_id")
@TENANT
@click.pass_context
def systems_remove(ctx: click.Context, system_id: str, tenant: str) -> None:
    _publish(settings_of(ctx), [(f"{SYSTEM}{tenant}/{system_id}", None)])
    click.echo(f"removed {tenant}/{system_id}")

"""``fabric patterns apply FILE | remove NAME | list``: CEP patterns, changed while the worker runs.

Patterns live in the registry topic ``ctx.registry`` (key ``pattern:<name>``, or
``pattern:<tenant>/<name>`` for a tenant's own with ``--tenant``; value:
the pattern as JSON with its version; removing writes a tombstone). Every CEP stage follows the topic and swaps
patterns without a restart: a changed pattern starts with fresh state, the others
keep theirs. A file is validated before anything is published."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click
import orjson

from fabric.cep.patterns import load_patterns
from fabric.cli.common import owner_option, settings_of
from fabric.kafka.compacted import publish, read_compacted
from fabric.kafka.topics import ensure_topics
from fabric.registry.store import PATTERN
from fabric.settings import Settings


async def _publish(s: Settings, items: list[tuple[str, bytes | None]]) -> None:
    await publish(s, s.topic("registry"), [(f"{PATTERN}{name}".encode(), v) for name, v in items])


async def current(s: Settings) -> dict[str, Any]:
    """The patterns applied so far: the topic read to its end, tombstones removing."""
    await ensure_topics(s, [s.topic("registry")])
    records = await read_compacted(s, s.topic("registry"))
    return {k.removeprefix(PATTERN): orjson.loads(v) for k, v in records.items() if v and k.startswith(PATTERN)}


TENANT = owner_option("patterns (they see only its events)")


@click.group(help="Add, change or remove CEP patterns while the worker runs (kept in <prefix>.registry).")
def patterns() -> None:
    pass


@patterns.command(help="Validate FILE and publish its patterns; --replace also removes the others.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Remove applied patterns that FILE does not name.")
@TENANT
@click.pass_context
def apply(ctx: click.Context, file: Path, replace: bool, tenant: str | None) -> None:
    s = settings_of(ctx)
    compiled = load_patterns(file.read_text())  # raises PatternError naming pattern and field
    owner = f"{tenant}/" if tenant else ""
    items: list[tuple[str, bytes | None]] = [(f"{owner}{p.name}", orjson.dumps(p.source)) for p in compiled]
    if replace:
        names = {f"{owner}{p.name}" for p in compiled}
        items += [(n, None) for n in asyncio.run(current(s)) if n not in names and n.startswith(owner)
                  and (owner or "/" not in n)]  # fmt: skip
    asyncio.run(_publish(s, items))
    for name, value in items:
        click.echo(f"{'applied' if value else 'removed'} {name}")


@patterns.command(help="Remove the pattern NAME.")
@click.argument("name")
@TENANT
@click.pass_context
def remove(ctx: click.Context, name: str, tenant: str | None) -> None:
    asyncio.run(_publish(settings_of(ctx), [(f"{tenant}/{name}" if tenant else name, None)]))
    click.echo(f"removed {name}")


@patterns.command(name="list", help="Show the patterns applied through the topic.")
@click.pass_context
def list_(ctx: click.Context) -> None:
    for name, spec in asyncio.run(current(settings_of(ctx))).items():
        kind = next((k for k in ("sequence", "absence", "aggregate") if k in spec), "?")
        click.echo(f"{name:<40} v{spec.get('version', 1):<4} {kind}")

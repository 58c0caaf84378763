"""``fabric policies apply FILE | remove NAME | list``: injection policies for ``/v1/assemble``.

Each apply of a changed policy publishes a new version to the registry topic ``<prefix>.registry``;
routers pick it up without a restart. A file is validated before anything is sent.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import click
import orjson

from fabric.assembly.policy import parse_policies
from fabric.assembly.store import PolicyStore, load_published, publish
from fabric.cli.common import owner_option, settings_of
from fabric.settings import Settings

TENANT = owner_option("policies")


async def _store(s: Settings) -> PolicyStore:
    store = PolicyStore.bundled(s.security.injection_file)
    await load_published(s, store)
    return store


@click.group(help="Publish, remove or list injection policies (kept in <prefix>.registry).")
def policies() -> None:
    pass


@policies.command(help="Validate FILE and publish a new version of each policy that changed.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@TENANT
@click.pass_context
def apply(ctx: click.Context, file: Path, tenant: str | None) -> None:
    s = settings_of(ctx)
    owner = f"{tenant}/" if tenant else ""
    parsed = parse_policies(file.read_text(), str(file))  # raises ConfigError naming the field
    store = asyncio.run(_store(s))
    items: list[tuple[str, bytes | None]] = []
    for p in parsed:
        current = store.get(p.name, tenant=tenant) if store.owner(p.name, tenant) == tenant else None
        if current is not None and current.model_copy(update={"version": p.version}) == p:
            click.echo(f"unchanged {p.name}@{current.version}")
            continue
        p = p.model_copy(update={"version": store.next_version(p.name, tenant)})
        items.append((f"{owner}{p.name}@{p.version}", orjson.dumps(p.model_dump(mode="json"))))
    asyncio.run(publish(s, items))
    for key, _ in items:
        click.echo(f"applied {key}")


@policies.command(help="Remove every published version of the policy NAME.")
@click.argument("name")
@TENANT
@click.pass_context
def remove(ctx: click.Context, name: str, tenant: str | None) -> None:
    s = settings_of(ctx)
    store = asyncio.run(_store(s))
    owner = f"{tenant}/" if tenant else ""
    versions = store.owners.get(tenant, {}).get(name, {})
    asyncio.run(publish(s, [(f"{owner}{name}@{v}", None) for v in versions]))
    click.echo(f"removed {name}")


@policies.command(name="list", help="Show the current version of every policy (as --tenant sees them).")
@TENANT
@click.pass_context
def list_(ctx: click.Context, tenant: str | None) -> None:
    for p in asyncio.run(_store(settings_of(ctx))).latest(tenant):
        click.echo(f"{p.name:<30} v{p.version:<4} {' > '.join(s.context_type for s in p.sections)}")

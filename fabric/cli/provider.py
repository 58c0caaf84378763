"""``fabric provider ...``: the built-in providers, each a long-running process.

fabric provider logs --tenant acme --service orders-api --file /var/log/orders.jsonl
fabric provider prometheus --tenant acme --service orders-api --url http://127.0.0.1:9100/metrics
fabric provider webhooks --tenant acme --secret crm=$CRM_SECRET --port 8702
fabric provider sql --tenant acme --url sqlite:///shop.db --table accounts
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from fabric.cli.common import owner_option, settings_of
from fabric.errors import FabricError
from fabric.providers.sdk import Provider
from fabric.settings import Settings

TENANT = click.option("--tenant", required=True, envvar="FABRIC_PROVIDER_TENANT", help="Tenant the events belong to.")


@click.group(help="Run a built-in provider (logs, prometheus, webhooks, sql).")
def provider() -> None:
    pass


@provider.command(help="Tail a file of log lines (JSON or plain) or stdin into LogEntry events.")
@TENANT
@click.option("--service", required=True, help="The service the lines come from (the subject).")
@click.option("--file", "path", type=click.Path(dir_okay=False, path_type=Path), help="Follow this file.")
@click.option("--stdin", is_flag=True, help="Read lines from stdin until it ends.")
@click.option("--from-end", is_flag=True, help="Skip what the file already holds.")
@click.pass_context
def logs(ctx: click.Context, tenant: str, service: str, path: Path | None, stdin: bool, from_end: bool) -> None:
    from fabric.providers.builtin.logtail import follow, stdin_lines, tail

    if bool(path) == stdin:
        raise FabricError("give either --file PATH or --stdin")

    async def main(s: Settings) -> None:
        async with Provider(s, source=f"file://{path}" if path else "stdin://", tenant=tenant) as p:
            lines = follow(path, from_start=not from_end) if path else stdin_lines()
            await tail(p, lines, service, str(path or "stdin"))

    asyncio.run(main(settings_of(ctx)))


@provider.command(help="Scrape a Prometheus exposition endpoint into Metric events.")
@TENANT
@click.option("--url", required=True, help="The /metrics URL.")
@click.option("--service", required=True, help="The service the metrics describe.")
@click.option("--every", "every_s", default=15.0, show_default=True, help="Seconds between scrapes.")
@click.pass_context
def prometheus(ctx: click.Context, tenant: str, url: str, service: str, every_s: float) -> None:
    from fabric.providers.builtin.prometheus import scrape

    async def main(s: Settings) -> None:
        async with Provider(s, source=url, tenant=tenant) as p:
            await scrape(p, url, service, every_s)

    asyncio.run(main(settings_of(ctx)))


@provider.command(help="Receive HMAC-signed SaaS webhooks (POST /hooks/{system}) into SaaSRecord events.")
@TENANT
@click.option("--secret", "secrets", multiple=True, required=True, help="system=secret; repeat per system.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8702, show_default=True)
@click.option(
    "--max-body-bytes", default=1 << 20, show_default=True, help="Larger deliveries are refused unread (413)."
)
@click.option("--tolerance-s", default=300.0, show_default=True, help="Signed times further from now are refused.")
@click.pass_context
def webhooks(
    ctx: click.Context, tenant: str, secrets: tuple[str, ...], host: str, port: int, max_body_bytes: int,
    tolerance_s: float,
) -> None:  # fmt: skip
    import uvicorn

    from fabric.providers.builtin.webhooks import webhook_app

    table = {}
    for item in secrets:
        system, sep, secret = item.partition("=")
        if not sep or not system or not secret:
            raise FabricError(f"--secret must be system=secret, got {item!r}")
        table[system] = secret.encode()

    async def main(s: Settings) -> None:
        async with Provider(s, source=f"webhook://{host}:{port}", tenant=tenant) as p:
            app = webhook_app(p, table, max_body_bytes=max_body_bytes, tolerance_s=tolerance_s)
            server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
            await server.serve()

    asyncio.run(main(settings_of(ctx)))


@provider.command(help="Poll a table by its updated_at column into SaaSRecord (and SQLSchema) events.")
@TENANT
@click.option("--url", required=True, help="sqlite:///path.db or postgresql://user@host/db")
@click.option("--table", required=True)
@click.option("--key", default="id", show_default=True, help="Primary key column.")
@click.option("--updated", default="updated_at", show_default=True, help="Column that grows on every change.")
@click.option("--object", "obj", help="Object name in the events (default: the table).")
@click.option("--every", "every_s", default=5.0, show_default=True, help="Seconds between polls.")
@click.pass_context
def sql(ctx: click.Context, tenant: str, url: str, table: str, key: str, updated: str, obj: str | None,
        every_s: float) -> None:  # fmt: skip
    from fabric.providers.builtin.sqlpoll import Table, TablePoller

    s = settings_of(ctx)
    t = Table(url, table, key, updated)
    state = s.data_dir / "providers" / f"sql-{tenant}-{t.database}-{table}.json"

    async def main() -> None:
        async with Provider(s, source=f"{t.kind}://{t.database}/{table}", tenant=tenant) as p:
            await TablePoller(p, t, obj=obj, state_file=state).run(every_s)

    asyncio.run(main())


@provider.command(help="Generate a provider (manifest, Avro schemas, runnable module) from an API spec or a database.")
@click.option("--openapi", "spec", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="OpenAPI 3 file.")
@click.option("--database", "url", help="sqlite:///file.db or postgresql://... to introspect.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Directory to write.")
@click.option("--owner", default="unknown", show_default=True, help="Team that owns the provider.")
def scaffold(spec: Path | None, url: str | None, out: Path, owner: str) -> None:
    from fabric.providers.scaffold import from_database, from_openapi, write

    if bool(spec) == bool(url):
        raise FabricError("give either --openapi FILE or --database URL")
    if spec:
        info, resources = from_openapi(spec)
        files = write(out, info, resources, kind="openapi", owner=owner)
    else:
        assert url is not None
        info, resources = from_database(url)
        files = write(out, info, resources, kind="database", owner=owner, url=url)
    for r in resources:
        click.echo(f"{r.event_type:<36} from {r.path} (key {r.key})")
    for f in files:
        click.echo(f"wrote {f}")
    click.echo(
        f"run it: python {out / 'provider.py'} --tenant <tenant>; register it: fabric provider register {out / 'manifest.yaml'}"
    )


@provider.command(help="Publish a provider manifest to the registry (topic <prefix>.registry).")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@owner_option("manifest")
@click.pass_context
def register(ctx: click.Context, manifest: Path, tenant: str | None) -> None:
    from fabric.registry.manifests import load_manifest, publish_manifest

    m = load_manifest(manifest, tenant)
    asyncio.run(publish_manifest(settings_of(ctx), m))
    click.echo(f"registered {m.kind} {m.id} ({len(m.spec.get('produces') or m.spec.get('consumes') or [])} entries)")

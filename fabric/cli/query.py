"""``fabric query "SQL"``: query the events, DLQ (and later composites, audit) tables."""

from __future__ import annotations

import json

import click

from fabric.cli.common import settings_of
from fabric.sinks.query import query as run


@click.command(help="Run SQL on the fabric's ClickHouse (tables: fabric.events, fabric.dlq), running or not.")
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "tsv"]), default="table", show_default=True)
@click.pass_context
def query(ctx: click.Context, sql: str, fmt: str) -> None:
    cols, rows = run(settings_of(ctx), sql)
    if fmt == "json":
        click.echo(json.dumps([dict(zip(cols, r, strict=True)) for r in rows], default=str))
        return
    if fmt == "tsv":
        click.echo("\t".join(cols))
        for r in rows:
            click.echo("\t".join(str(v) for v in r))
        return
    cells = [[str(v) for v in r] for r in rows]
    widths = [min(60, max([len(c)] + [len(r[i]) for r in cells])) for i, c in enumerate(cols)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in cells:
        click.echo("  ".join(v[:60].ljust(w) for v, w in zip(r, widths, strict=True)))
    click.echo(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")

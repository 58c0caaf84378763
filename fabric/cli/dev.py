"""``fabric dev up | down | status``: the embedded broker and Redis on loopback."""

from __future__ import annotations

import click

from fabric.cli.common import settings_of
from fabric.dev.kafka_broker import nodes
from fabric.dev.stack import PartStatus, Stack


def _print(rows: list[PartStatus]) -> None:
    for r in rows:
        state = "up" if r.answering else "down"
        pid = f"pid {r.pid}" if r.pid else "no pid"
        click.echo(f"{r.name:<8} {r.address:<22} {state:<5} {pid:<12} {r.note}".rstrip())


@click.group(help="Start, stop or inspect the embedded dev stack (broker, Redis) under .fabric/.")
def dev() -> None:
    pass


@dev.command(help="Start the broker and Redis; fine to run twice.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for each part.")
@click.option(
    "--broker", type=click.Choice(["kafka", "tansu"]), default=None,
    help="Apache Kafka (KRaft, JDK; jars resolved by Maven once) or Tansu (light, memory only). "
    "Default: FABRIC_KAFKA__BROKER.",
)  # fmt: skip
@click.option(
    "--brokers", type=click.Choice(["1", "3"]), default=None,
    help="Apache Kafka nodes: 3 starts a KRaft cluster on loopback (topics get 3 replicas, "
    "min.insync.replicas 2). Default: FABRIC_KAFKA__BROKERS.",
)  # fmt: skip
@click.pass_context
def up(ctx: click.Context, timeout: float, broker: str | None, brokers: str | None) -> None:
    s = settings_of(ctx)
    update: dict[str, object] = {}
    if broker:
        update["broker"] = broker
    if brokers:
        update["brokers"] = int(brokers)
    if update:
        s = s.model_copy(update={"kafka": s.kafka.model_validate({**s.kafka.model_dump(), **update})})
    _print(Stack(s).up(timeout))
    if s.kafka.brokers > 1:
        addresses = ",".join(f"{n.host}:{n.port}" for n in nodes(s))
        click.echo(
            f"a {s.kafka.brokers}-node cluster: give the fabric's processes (and 'fabric dev down') "
            f"FABRIC_KAFKA__BROKERS={s.kafka.brokers} FABRIC_KAFKA__BOOTSTRAP={addresses}"
        )


@dev.command(help="Stop what 'fabric dev up' started.")
@click.pass_context
def down(ctx: click.Context) -> None:
    _print(Stack(settings_of(ctx)).down())


@dev.command(help="Show ports, PIDs and whether each part answers; exit 1 if one is down.")
@click.pass_context
def status(ctx: click.Context) -> None:
    rows = Stack(settings_of(ctx)).status()
    _print(rows)
    s = settings_of(ctx)
    click.echo(f"{'clickhouse':<8} {s.clickhouse.url}")
    if not all(r.answering for r in rows):
        ctx.exit(1)

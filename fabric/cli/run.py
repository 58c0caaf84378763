"""``fabric run``: the whole fabric with the demo scenario; ``fabric demo``: the scenario alone."""

from __future__ import annotations

import asyncio
import os
import signal

import click

from fabric.cli.common import settings_of
from fabric.dev.procs import Processes
from fabric.dev.stack import Stack


@click.command(help="Start the stack, the worker, sink and router, replay the demo scenario, "
               "then show live traffic until Ctrl-C (or --duration seconds).")  # fmt: skip
@click.option("--duration", type=float, default=float(os.environ.get("FABRIC_RUN_DURATION", "0")) or None,
              help="Stop by itself after this many seconds of live traffic [FABRIC_RUN_DURATION].")  # fmt: skip
@click.pass_context
def run(ctx: click.Context, duration: float | None) -> None:
    from fabric.demo import scenario

    s = settings_of(ctx)
    if not s.workflows.allowed_hosts:  # the demo's reaction calls systems it starts on loopback
        s = s.model_copy(update={"workflows": s.workflows.model_copy(update={"allowed_hosts": ["127.0.0.1"]})})
    # Ctrl-C and a supervisor's SIGTERM both stop everything this command started, even
    # when it was launched with SIGINT ignored (as background jobs of a script are).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    stack = Stack(s)
    started = [p for p in stack.up() if p.note == "started"]
    for p in stack.status():
        click.echo(f"{p.name:<8} {p.address:<20} pid {p.pid}")
    procs = Processes(s)
    code = 1
    try:
        for name in ("worker", "sink", "router"):
            proc = procs.start(name)
            click.echo(f"{name:<8} pid {proc.pid:<8} log {procs.log_dir / name}.log")
        procs.wait_ready()
        click.echo(f"router   {procs.url} ready; replaying the scenario (Ctrl-C stops everything)")
        code = asyncio.run(scenario(s, procs.url, live_seconds=duration if duration else float("inf")))
    except KeyboardInterrupt:
        code = 0
        click.echo("\nstopping ...")
    finally:
        procs.stop()
        if started:
            stack.down()
        click.echo("stopped: worker, sink, router" + (" and the stack" if started else ""))
        try:
            from fabric.sinks.query import query

            _, rows = query(s, "SELECT context_type, count() FROM fabric.events FINAL GROUP BY context_type ORDER BY 1")
            click.echo(
                f"events in ClickHouse ({s.data_dir}, every run so far): " + ", ".join(f"{r[0]} {r[1]}" for r in rows)
            )
            _, rows = query(s, "SELECT count() FROM fabric.dlq FINAL")
            click.echo(f"DLQ records in ClickHouse: {rows[0][0]}")
        except Exception as e:
            click.echo(f"(could not read ClickHouse: {e})")
    ctx.exit(code)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.command(help="Replay the demo scenario against a running fabric (router at FABRIC_ROUTER__PORT).")
@click.option("--live", type=float, default=0.0, help="Seconds of live trickle after the scenario.")
@click.pass_context
def demo(ctx: click.Context, live: float) -> None:
    from fabric.demo import scenario

    s = settings_of(ctx)
    ctx.exit(asyncio.run(scenario(s, f"http://{s.router.host}:{s.router.port}", live_seconds=live)))

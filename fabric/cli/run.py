"""``fabric run``: the whole fabric with the demo scenario; ``fabric demo``: the scenario alone."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import httpx

from fabric.cli.main import settings_of
from fabric.dev.stack import Stack
from fabric.errors import StackError
from fabric.settings import Settings


def _router_url(s: Settings) -> str:
    return f"http://{s.router.host}:{s.router.port}"


def wait_healthy(url: str, procs: dict[str, subprocess.Popen[bytes]], logs: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, p in procs.items():
            if p.poll() is not None:
                raise StackError(f"{name} exited with code {p.returncode} while starting (log: {logs / name}.log)")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise StackError(f"the router did not answer on {url} within {timeout:.0f} s (log: {logs}/router.log)")


def stop_all(procs: dict[str, subprocess.Popen[bytes]], timeout: float = 15) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs.values():
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@click.command(help="Start the stack, the worker, sink and router, replay the demo scenario, "
               "then show live traffic until Ctrl-C (or --duration seconds).")  # fmt: skip
@click.option("--duration", type=float, default=float(os.environ.get("FABRIC_RUN_DURATION", "0")) or None,
              help="Stop by itself after this many seconds of live traffic [FABRIC_RUN_DURATION].")  # fmt: skip
@click.pass_context
def run(ctx: click.Context, duration: float | None) -> None:
    from fabric.demo import scenario

    s = settings_of(ctx)
    stack = Stack(s)
    started = [p for p in stack.up() if p.note == "started"]
    for p in stack.status():
        click.echo(f"{p.name:<8} {p.address:<20} pid {p.pid}")
    logs = (s.data_dir / "run").resolve()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    code = 1
    try:
        for name in ("worker", "sink", "router"):
            with open(logs / f"{name}.log", "ab") as log:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "fabric", name], stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
            click.echo(f"{name:<8} pid {procs[name].pid:<8} log {logs / name}.log")
        wait_healthy(_router_url(s), procs, logs)
        click.echo(f"router   {_router_url(s)} ready; replaying the scenario (Ctrl-C stops everything)")
        code = asyncio.run(scenario(s, _router_url(s), live_seconds=duration if duration else float("inf")))
    except KeyboardInterrupt:
        code = 0
        click.echo("\nstopping ...")
    finally:
        stop_all(procs)
        if started:
            stack.down()
        click.echo("stopped: worker, sink, router" + (" and the stack" if started else ""))
        try:
            from fabric.sinks.query import query

            _, rows = query(s, "SELECT context_type, count() FROM fabric.events GROUP BY context_type ORDER BY 1")
            click.echo("events in ClickHouse: " + ", ".join(f"{r[0]} {r[1]}" for r in rows))
            _, rows = query(s, "SELECT count() FROM fabric.dlq")
            click.echo(f"DLQ records in ClickHouse: {rows[0][0]}")
        except Exception as e:
            click.echo(f"(could not read ClickHouse: {e})")
    ctx.exit(code)


@click.command(help="Replay the demo scenario against a running fabric (router at FABRIC_ROUTER__PORT).")
@click.option("--live", type=float, default=0.0, help="Seconds of live trickle after the scenario.")
@click.pass_context
def demo(ctx: click.Context, live: float) -> None:
    from fabric.demo import scenario

    s = settings_of(ctx)
    ctx.exit(asyncio.run(scenario(s, _router_url(s), live_seconds=live)))

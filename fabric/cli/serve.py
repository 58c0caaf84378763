"""``fabric worker``, ``fabric router``, ``fabric sink``: the long-running processes."""

from __future__ import annotations

import click
import uvloop

from fabric.cli.common import settings_of


@click.command(
    help="Run the pipeline worker: batch loops on aiokafka under mode's service lifecycle (no Faust app). "
    "route: ingest -> decode, validate, enrich, processors -> typed topics (one Kafka transaction per batch); "
    "materialize: typed topics -> Redis cache and change feed; cep: keying and matching -> composites; workflows: events and composites -> runs in other systems."
)
@click.option(
    "--stages", default="route,materialize,cep,workflows", show_default=True, envvar="FABRIC_WORKER_STAGES",
    help="Comma-separated stages this process runs (route, materialize, cep: keying by correlation key and "
    "matching; cep needs FABRIC_PATTERNS_FILE; workflows: triggers and runs) [FABRIC_WORKER_STAGES].",
)  # fmt: skip
@click.pass_context
def worker(ctx: click.Context, stages: str) -> None:
    from fabric.worker import run_worker

    run_worker(settings_of(ctx), tuple(s.strip() for s in stages.split(",") if s.strip()))


@click.command(help="Serve pulls, pushes and ingest over HTTP/WebSocket (FABRIC_ROUTER__HOST/PORT).")
@click.option("--host", default=None, help="Listen address [FABRIC_ROUTER__HOST, 127.0.0.1].")
@click.option("--port", default=None, type=int, help="Listen port [FABRIC_ROUTER__PORT, 8700].")
@click.pass_context
def router(ctx: click.Context, host: str | None, port: int | None) -> None:
    from fabric.router.app import run_router

    s = settings_of(ctx)
    update = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if update:
        s = s.model_copy(update={"router": s.router.model_copy(update=update)})
    run_router(s)


@click.command(help="Write events and DLQ records to ClickHouse (FABRIC_CLICKHOUSE_URL).")
@click.pass_context
def sink(ctx: click.Context) -> None:
    from fabric.sinks.sink import serve

    uvloop.run(serve(settings_of(ctx)))

"""``fabric worker``: a Faust worker process running the pipeline stages.

The Faust app gives the process its lifecycle (start/stop of every service, logging,
signals) and is where windowed tables and changelogs live; the hot stages are
batch loops registered as services beside it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
import uvloop
from prometheus_client import start_http_server

from fabric.pipeline.stages import MaterializeStage, RegistryService, RouteStage
from fabric.settings import Settings
from fabric.topics.registry import Registry

log = logging.getLogger(__name__)


def make_app(settings: Settings) -> faust.App:
    k = settings.kafka
    return faust.App(
        f"{k.topic_prefix}-fabric-worker",
        broker=f"kafka://{k.bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_partitions=k.partitions,
        broker_session_timeout=k.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(0.2, k.session_timeout_ms / 5000),
        broker_rebalance_timeout=k.session_timeout_ms / 1000,
        producer_linger_ms=2,
        datadir=str(settings.data_dir / "faust"),
    )


def run_worker(settings: Settings, stages: tuple[str, ...] = ("route", "materialize", "cep")) -> None:
    registry = Registry.load(settings.schemas_dir)
    schemas = RegistryService(settings, registry)  # first: stages start with every known schema version
    services: list[Any] = [schemas]
    if "route" in stages:
        services.append(RouteStage(settings, registry, schemas.follower))
    if "materialize" in stages:
        services.append(MaterializeStage(settings, registry, schemas.follower))
    if "cep" in stages:
        from fabric.cep.stage import CepStage, load_pattern_file

        patterns = load_pattern_file(settings.patterns_file)
        if patterns:
            services.append(CepStage(settings, registry, patterns, follower=schemas.follower))
    if settings.worker.metrics_port:
        start_http_server(settings.worker.metrics_port, addr="127.0.0.1")
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())
    app = make_app(settings)
    worker = faust.Worker(app, *services, loglevel=settings.worker.log_level, quiet=True)
    worker.execute_from_commandline()  # SIGINT and SIGTERM stop it cleanly

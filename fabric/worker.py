"""``fabric worker``: one process running the pipeline stages as ``mode`` services.

``mode`` (the service library Faust is built on) gives the process its lifecycle: start
and stop of every stage in order, logging, SIGINT/SIGTERM. The stages are batch loops
on aiokafka clients from ``fabric.kafka``; no Faust app runs (it would start a
consumer and producer of its own, idle, and without the TLS/SASL settings).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import mode
import uvloop
from prometheus_client import start_http_server

from fabric.events.catalogue import Catalogue
from fabric.pipeline.materialize_stage import MaterializeStage
from fabric.pipeline.route import RouteStage
from fabric.pipeline.stage import SchemaService
from fabric.settings import Settings

log = logging.getLogger(__name__)


STAGES = ("route", "materialize", "cep", "workflows")


def run_worker(settings: Settings, stages: tuple[str, ...] = STAGES) -> None:
    catalogue = Catalogue.load(settings.schemas_dir)
    schemas = SchemaService(settings, catalogue)  # first: stages start with every known schema version
    services: list[Any] = [schemas]
    if "route" in stages:
        services.append(RouteStage(settings, catalogue, schemas.follower))
    if "materialize" in stages:
        services.append(MaterializeStage(settings, catalogue, schemas.follower))
    if "cep" in stages:
        from fabric.cep.stage import CepStage, KeyStage, load_pattern_file

        patterns = load_pattern_file(settings.patterns_file)
        if patterns:  # keying and matching: see fabric.cep.stage
            services.append(KeyStage(settings, catalogue, patterns, follower=schemas.follower))
            services.append(CepStage(settings, catalogue, patterns, follower=schemas.follower))
    if "workflows" in stages:
        from fabric.workflows.source import WorkflowSource
        from fabric.workflows.stage import TriggerStage, WorkflowStage

        source = WorkflowSource(settings)
        services += [source, TriggerStage(settings, catalogue, source), WorkflowStage(settings, catalogue, source)]
    if settings.worker.metrics_port:
        start_http_server(settings.worker.metrics_port, addr="127.0.0.1")
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())
    worker = mode.Worker(*services, loglevel=settings.worker.log_level, quiet=True)
    worker.execute_from_commandline()  # SIGINT and SIGTERM stop it cleanly

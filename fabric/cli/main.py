"""``fabric``: one entry point, one module per command.

Every setting is a ``FABRIC_*`` environment variable (see ``fabric.settings``); the
flags below override the most common ones.
"""

from __future__ import annotations

import logging
import sys

import click

from fabric.cli import audit, dev, mcp, patterns, policies, provider, query, registry, run, serve, token, workflows
from fabric.errors import FabricError
from fabric.settings import load_settings

ENV_HELP = (
    "Settings come from FABRIC_* variables: FABRIC_KAFKA_BOOTSTRAP, FABRIC_REDIS_URL, "
    "FABRIC_CLICKHOUSE_URL (chdb:///dir or http://host:8123), FABRIC_KAFKA__TOPIC_PREFIX, "
    "FABRIC_ROUTER__PORT, FABRIC_DATA_DIR ..."
)


class FabricGroup(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except FabricError as e:
            click.echo(f"fabric: {e}", err=True)
            sys.exit(1)


@click.group(cls=FabricGroup, help=f"Context Fabric: context changes from Kafka to copilots.\n\n{ENV_HELP}")
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("aiokafka", "kafka", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ctx.obj = load_settings()


main.add_command(dev.dev)
main.add_command(serve.worker)
main.add_command(serve.router)
main.add_command(serve.sink)
main.add_command(query.query)
main.add_command(run.run)
main.add_command(run.demo)
main.add_command(patterns.patterns)
main.add_command(policies.policies)
main.add_command(token.token)
main.add_command(audit.audit)
main.add_command(mcp.mcp)
main.add_command(provider.provider)
main.add_command(registry.registry)
main.add_command(workflows.workflows)
main.add_command(workflows.systems)

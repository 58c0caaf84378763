"""``fabric mcp --stdio``: the MCP server over stdin/stdout, for desktop clients.

Over HTTP the server is part of the router (``/mcp``). Over stdio there is no
request to carry a token, so the process acts for one token, given by ``--token``
or ``FABRIC_MCP_TOKEN``, verified at start like any other.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from fabric.cli.common import settings_of
from fabric.errors import FabricError
from fabric.settings import Settings


async def serve_stdio(settings: Settings, token: str) -> None:
    from mcp.server.stdio import stdio_server

    from fabric.errors import Unauthorized
    from fabric.router.mcp import FabricMCP, build_server
    from fabric.router.runtime import open_state

    async with open_state(settings) as state:
        try:
            who = await state.gate.verifier.verify(f"Bearer {token}")
        except Unauthorized as e:
            raise FabricError(f"the MCP token is not accepted: {e}") from None
        server = build_server(FabricMCP(lambda: state, who))
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())


@click.command(help="Serve MCP over stdio (over HTTP it is the router's /mcp).")
@click.option("--stdio", is_flag=True, required=True, help="Talk MCP on stdin/stdout.")
@click.option(
    "--token", envvar="FABRIC_MCP_TOKEN", required=True, help="The bearer token to act as (FABRIC_MCP_TOKEN)."
)
@click.pass_context
def mcp(ctx: click.Context, stdio: bool, token: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, force=True)  # stdout is the protocol
    asyncio.run(serve_stdio(settings_of(ctx), token))

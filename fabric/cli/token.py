"""``fabric token``: mint a token with the local dev issuer's key (development and tests).

Production tokens come from the configured issuer (``FABRIC_SECURITY__ISSUER`` and
``FABRIC_SECURITY__JWKS_URL``); the router refuses dev tokens when a JWKS is set.
"""

from __future__ import annotations

import click

from fabric.cli.common import settings_of
from fabric.errors import FabricError
from fabric.security.tokens import OPERATOR_SCOPE, mint


@click.command(help="Print a dev bearer token (signed with <data_dir>/keys/dev-es256.pem).")
@click.option("--tenant", envvar="FABRIC_TOKEN_TENANT", help="The tenant the token acts for.")
@click.option(
    "--scope", "scopes", multiple=True, default=["context:read:*"], show_default=True,
    help="Repeat or space-separate: context:read:<Type>, context:read:*, composites:read, events:write, "
    "registry:write (the tenant's manifests), audit:read (its audit trail), workflows:read (its workflow runs), "
    "admin (every tenant scope).",
)  # fmt: skip
@click.option(
    "--operator", is_flag=True,
    help="The platform operator's token (tenant security.operator_tenant, scope platform:admin): changes "
    "context types' schemas, compatibility and routing for every tenant.",
)  # fmt: skip
@click.option("--roles", default="", help="Comma-separated roles for the access rules (sre,security,staff...).")
@click.option("--sub", default="dev", show_default=True, help="Who the token names.")
@click.option("--ttl", "ttl_s", default=3600, show_default=True, help="Seconds until it expires.")
@click.pass_context
def token(
    ctx: click.Context, tenant: str | None, scopes: tuple[str, ...], roles: str, sub: str, ttl_s: int, operator: bool
) -> None:
    s = settings_of(ctx)
    if s.security.jwks_url:
        raise FabricError("a JWKS is configured (FABRIC_SECURITY__JWKS_URL): get tokens from that issuer")
    flat = [x for sc in scopes for x in sc.split()]
    if operator:
        tenant, flat = s.security.operator_tenant, [*flat, "admin", OPERATOR_SCOPE]
    if not tenant:
        raise FabricError("give --tenant T (or --operator)")
    try:
        click.echo(mint(s, tenant, flat, sub=sub, roles=[r for r in roles.split(",") if r], ttl_s=ttl_s))
    except ValueError as e:
        raise FabricError(str(e)) from None

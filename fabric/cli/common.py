"""What every command module shares: the settings ``fabric`` loaded, and ``--tenant``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from fabric.events.codecs import TENANT
from fabric.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def _tenant_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not TENANT.fullmatch(value):
        raise click.BadParameter("must be 1-64 of A-Z a-z 0-9 _ . - (not starting with _ . -)")
    return value


def owner_option(what: str) -> Callable[[F], F]:
    """``--tenant T``: the tenant's own ``what`` (they apply to it alone and shadow the
    platform's of the same name for it); without it, the platform's, every tenant's default."""
    return click.option(
        "--tenant", default=None, callback=_tenant_name,
        help=f"The tenant's own {what} (they apply to it alone); default: the platform's, for every tenant.",
    )  # fmt: skip


def settings_of(ctx: click.Context) -> Settings:
    obj: Settings = ctx.obj
    return obj

"""``fabric registry ...``: schemas, compatibility and manifests, through the router's API.

The token comes from ``--token`` / ``FABRIC_TOKEN``; without one, a dev operator token (tenant
``security.operator_tenant``, scope ``platform:admin``) is minted locally (only when no JWKS is configured).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import httpx
import yaml

from fabric.cli.common import settings_of
from fabric.errors import FabricError
from fabric.settings import Settings


def _client(s: Settings, token: str | None) -> httpx.Client:
    if not token:
        if s.security.jwks_url:
            raise FabricError("give --token (FABRIC_TOKEN): tokens come from the configured issuer")
        from fabric.security.tokens import OPERATOR_SCOPE, mint

        token = mint(s, s.security.operator_tenant, ["admin", OPERATOR_SCOPE], sub="fabric-registry-cli", ttl_s=300)
    return httpx.Client(base_url=f"http://{s.router.host}:{s.router.port}",
                        headers={"Authorization": f"Bearer {token}"}, timeout=30)  # fmt: skip


def _call(ctx: click.Context, method: str, path: str, body: Any = None) -> Any:
    s = settings_of(ctx)
    with _client(s, ctx.meta.get("registry_token")) as c:
        try:
            r = c.request(method, path, json=body)
        except httpx.HTTPError as e:
            raise FabricError(f"cannot reach the router at {c.base_url}: {e}") from None
    doc = r.json() if r.content else None
    if r.status_code >= 400:
        message = doc.get("message") or doc.get("error") if isinstance(doc, dict) else r.text
        raise FabricError(f"{r.status_code}: {message}")
    return doc


def _schema(file: Path) -> str:
    return json.dumps(yaml.safe_load(file.read_text()))  # .avsc is JSON, which YAML reads too


@click.group(help="The schema registry and manifests (via the router; Confluent-compatible API).")
@click.option("--token", envvar="FABRIC_TOKEN", help="Bearer token (FABRIC_TOKEN); default: a local dev admin token.")
@click.pass_context
def registry(ctx: click.Context, token: str | None) -> None:
    ctx.meta["registry_token"] = token


@registry.command(help="List subjects.")
@click.pass_context
def subjects(ctx: click.Context) -> None:
    for s in _call(ctx, "GET", "/subjects"):
        click.echo(s)


@registry.command(help="Show a subject's versions, or one version's schema.")
@click.argument("subject")
@click.argument("version", required=False)
@click.pass_context
def show(ctx: click.Context, subject: str, version: str | None) -> None:
    if version is None:
        click.echo(" ".join(str(v) for v in _call(ctx, "GET", f"/subjects/{subject}/versions")))
        return
    doc = _call(ctx, "GET", f"/subjects/{subject}/versions/{version}")
    click.echo(f"{doc['subject']} v{doc['version']} id {doc['id']}")
    click.echo(json.dumps(json.loads(doc["schema"]), indent=2))


@registry.command(help="Would FILE be compatible as the next version of SUBJECT?")
@click.argument("subject")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def check(ctx: click.Context, subject: str, file: Path) -> None:
    doc = _call(ctx, "POST", f"/compatibility/subjects/{subject}/versions/latest", {"schema": _schema(file)})
    if doc["is_compatible"]:
        click.echo("compatible")
        return
    raise FabricError("incompatible: " + "; ".join(doc["messages"]))


@registry.command(help="Register FILE (Avro) as the next version of SUBJECT.")
@click.argument("subject")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def register(ctx: click.Context, subject: str, file: Path) -> None:
    doc = _call(ctx, "POST", f"/subjects/{subject}/versions", {"schema": _schema(file)})
    click.echo(f"registered {subject}: id {doc['id']}")


@registry.command(help="Show or set a subject's compatibility (BACKWARD, FORWARD, FULL, NONE).")
@click.argument("subject")
@click.argument("level", required=False)
@click.pass_context
def config(ctx: click.Context, subject: str, level: str | None) -> None:
    if level:
        _call(ctx, "PUT", f"/config/{subject}", {"compatibility": level.upper()})
    click.echo(_call(ctx, "GET", f"/config/{subject}")["compatibilityLevel"])


@registry.command(help="Publish a provider or consumer manifest (YAML/JSON); without FILE, list them.")
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def manifests(ctx: click.Context, file: Path | None) -> None:
    if file:
        doc = _call(ctx, "POST", "/v1/registry/manifests", yaml.safe_load(file.read_text()))
        click.echo(f"registered {doc['registered']}")
        return
    for m in _call(ctx, "GET", "/v1/registry/manifests"):
        kind, spec = next(iter(m.items()))
        click.echo(f"{kind:<9} {spec['id']:<30} owner {spec.get('owner', '?')}")


@registry.command(
    help="Show the event-type routing in force, or publish FILE (YAML list of {match, context_type}) as a new version."
)
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def routing(ctx: click.Context, file: Path | None) -> None:
    if file:
        doc = yaml.safe_load(file.read_text())
        rules = doc.get("rules", doc) if isinstance(doc, dict) else doc
        click.echo(f"routing version {_call(ctx, 'PUT', '/v1/registry/routing', {'rules': rules})['version']}")
        return
    doc = _call(ctx, "GET", "/v1/registry/routing")
    click.echo(f"routing version {doc['version']}")
    for r in doc["rules"]:
        click.echo(f"  {r['match']:<24} -> {r['context_type']}")


@registry.command(
    name="list", help="Everything the registry versions: schemas, routing, patterns, policies, manifests."
)
@click.pass_context
def list_(ctx: click.Context) -> None:
    doc = _call(ctx, "GET", "/v1/registry")
    for subject, versions in doc["schemas"].items():
        click.echo(f"schema   {subject:<28} versions {', '.join(map(str, versions))}")
    click.echo(f"routing  version {doc['routing']['version']} ({doc['routing']['rules']} rules)")
    for name, version in doc["patterns"].items():
        click.echo(f"pattern  {name:<28} v{version}")
    for name, versions in doc["policies"].items():
        click.echo(f"policy   {name:<28} versions {', '.join(map(str, versions))}")
    for key in doc["manifests"]:
        click.echo(f"manifest {key}")

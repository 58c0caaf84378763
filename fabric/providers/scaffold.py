"""``fabric provider scaffold``: a provider generated from an OpenAPI spec or a database.

It writes, into one directory:
- ``manifest.yaml``: the provider manifest (id, owner, source, endpoint, auth, the event
  types it produces, their context type and schema), ready for ``fabric provider register``;
- ``schemas/<Record>.avsc``: an Avro record per API resource or table, naming its fields;
- ``provider.py``: a runnable provider (``python provider.py --tenant acme``) that
  publishes the resources' changes as SaaSRecord events (``saas.<object>.updated``):
  - from an API: it polls each collection endpoint (a GET whose 200 response is an
    array of a component schema) and publishes the items that are new or changed;
  - from a database: it polls each table by its change column (``updated_at`` and the
    like), with ``fabric.providers.builtin.sqlpoll``.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fabric.errors import ConfigError

_AVRO = {"string": "string", "integer": "long", "number": "double", "boolean": "boolean"}
_SQL_AVRO = [("INT", "long"), ("CHAR", "string"), ("TEXT", "string"), ("CLOB", "string"), ("REAL", "double"),
             ("FLOA", "double"), ("DOUB", "double"), ("NUM", "double"), ("DEC", "double"), ("BOOL", "boolean")]  # fmt: skip
CHANGE_COLUMNS = ("updated_at", "modified_at", "last_modified", "updated", "changed_at", "mtime")


@dataclass
class Resource:
    """One thing the provider publishes changes of."""

    name: str  # Avro record name and event object, e.g. Account
    fields: list[tuple[str, str, bool]]  # name, Avro primitive, required
    key: str = "id"
    path: str = ""  # API: the collection path; database: the table
    updated: str | None = None  # database: the change column
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def event_type(self) -> str:
        return f"saas.{self.name.lower()}.updated"

    def avsc(self, namespace: str) -> dict[str, Any]:
        return {
            "type": "record", "name": self.name, "namespace": namespace,
            "doc": f"{self.name} as published by the provider (source {self.path}).",
            "fields": [{"name": n, "type": t if req else ["null", t], **({} if req else {"default": None})}
                       for n, t, req in self.fields],
        }  # fmt: skip


def _ident(text: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", text)
    return "".join(w[:1].upper() + w[1:] for w in words) or "Resource"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "provider"


# ------------------------------------------------------------------ OpenAPI


def _resolve(spec: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise ConfigError(f"only local $refs are supported, got {ref!r}")
        target: Any = spec
        for part in ref[2:].split("/"):
            if not isinstance(target, dict) or part not in target:
                raise ConfigError(f"$ref {ref!r} points nowhere")
            target = target[part]
        node = target
    return node


def from_openapi(path: Path) -> tuple[dict[str, Any], list[Resource]]:
    """(spec info, resources) of an OpenAPI 3 document; the spec is validated first."""
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

    try:
        spec = yaml.safe_load(path.read_text())
        validate(spec)
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    except OpenAPIValidationError as e:
        raise ConfigError(f"{path} is not a valid OpenAPI document: {e.message}") from None
    resources = []
    for route, ops in (spec.get("paths") or {}).items():
        if "{" in route or "get" not in ops:
            continue
        ok = (ops["get"].get("responses") or {}).get("200") or {}
        schema = _resolve(spec, ((ok.get("content") or {}).get("application/json") or {}).get("schema"))
        if not isinstance(schema, dict) or schema.get("type") != "array":
            continue
        item_ref = (schema.get("items") or {}).get("$ref", "")
        item = _resolve(spec, schema.get("items"))
        if not isinstance(item, dict) or item.get("type", "object") != "object":
            continue
        name = _ident(item_ref.rsplit("/", 1)[-1] if item_ref else route.strip("/").rstrip("s"))
        required = set(item.get("required") or [])
        fields = []
        for fname, fschema in (item.get("properties") or {}).items():
            t = _AVRO.get(_resolve(spec, fschema).get("type", "string"), "string")
            fields.append((fname, t, fname in required))
        key = "id" if any(f[0] == "id" for f in fields) else (fields[0][0] if fields else "id")
        resources.append(Resource(name, fields, key=key, path=route))
    if not resources:
        raise ConfigError(f"{path}: no collection endpoint (a GET answering 200 with an array of objects)")
    info = spec.get("info") or {}
    servers = spec.get("servers") or [{}]
    return {"title": info.get("title", path.stem), "version": info.get("version", ""),
            "endpoint": servers[0].get("url", "")}, resources  # fmt: skip


# ------------------------------------------------------------------ databases


def from_database(url: str) -> tuple[dict[str, Any], list[Resource]]:
    """(database info, a resource per table that has a change column) of a database."""
    if url.startswith("sqlite:///"):
        file = url.removeprefix("sqlite:///")
        if not Path(file).exists():
            raise ConfigError(f"no SQLite database at {file}")
        con = sqlite3.connect(file)
        try:
            tables = [
                r[0]
                for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")
            ]
            described = {t: [(r[1], r[2] or "TEXT", bool(r[3]) or bool(r[5]), bool(r[5]))
                             for r in con.execute(f'PRAGMA table_info("{t}")')] for t in tables}  # fmt: skip
        finally:
            con.close()
        name = Path(file).stem
    elif url.startswith(("postgresql://", "postgres://")):
        described, name = _postgres_tables(url), url.rsplit("/", 1)[-1].split("?")[0]
    else:
        raise ConfigError(f"database url must be sqlite:///file.db or postgresql://..., got {url!r}")
    resources = []
    for table, cols in sorted(described.items()):
        names = [c[0] for c in cols]
        updated = next((c for c in CHANGE_COLUMNS if c in names), None)
        if updated is None:
            continue  # nothing tells a change: it cannot be polled
        key = next((c[0] for c in cols if c[3]), names[0])
        fields = [(c[0], _sql_avro(c[1]), c[2]) for c in cols]
        resources.append(Resource(_ident(table), fields, key=key, path=table, updated=updated))
    if not resources:
        raise ConfigError(f"{url}: no table has a change column ({', '.join(CHANGE_COLUMNS)})")
    return {"title": name, "version": "", "endpoint": url}, resources


def _sql_avro(sql_type: str) -> str:
    upper = sql_type.upper()
    return next((a for k, a in _SQL_AVRO if k in upper), "string")


def _postgres_tables(url: str) -> dict[str, list[tuple[str, str, bool, bool]]]:
    try:
        import psycopg
    except ImportError as e:
        from fabric.errors import MissingExtraError

        raise MissingExtraError("psycopg (for PostgreSQL introspection)", "postgres") from e
    with psycopg.connect(url) as con:
        rows = con.execute(
            "SELECT c.table_name, c.column_name, c.data_type, c.is_nullable = 'NO', "
            "EXISTS (SELECT 1 FROM information_schema.key_column_usage k JOIN information_schema.table_constraints t "
            "ON k.constraint_name = t.constraint_name WHERE t.constraint_type = 'PRIMARY KEY' "
            "AND k.table_name = c.table_name AND k.column_name = c.column_name) "
            "FROM information_schema.columns c WHERE c.table_schema = 'public' ORDER BY c.table_name, c.ordinal_position"
        ).fetchall()
    out: dict[str, list[tuple[str, str, bool, bool]]] = {}
    for table, col, dtype, required, pk in rows:
        out.setdefault(table, []).append((col, dtype, bool(required), bool(pk)))
    return out


# ------------------------------------------------------------------ output

_API_MODULE = '''"""Provider for {title}: generated by `fabric provider scaffold --openapi`. Edit freely.

Polls each collection endpoint every --every seconds and publishes the items that are
new or changed as SaaSRecord events. Run: python provider.py --tenant acme
(settings come from FABRIC_* variables, as for every fabric command).
"""

import argparse
import asyncio
import hashlib
import json

import httpx

from fabric.providers.sdk import Provider
from fabric.settings import load_settings

SYSTEM = {system!r}
ENDPOINT = {endpoint!r}
RESOURCES = {resources!r}  # (object, collection path, key field)


async def poll(provider, http, seen):
    events = []
    for obj, path, key in RESOURCES:
        r = await http.get(path)
        r.raise_for_status()
        for item in r.json():
            record_id = str(item[key])
            fields = {{k: v for k, v in item.items() if v is None or isinstance(v, (bool, int, float, str))}}
            digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()
            if seen.get((obj, record_id)) == digest:
                continue
            seen[(obj, record_id)] = digest
            data = {{"system": SYSTEM, "object": obj, "record_id": record_id, "fields": fields}}
            events.append(provider.event(f"saas.{{obj.lower()}}.updated", record_id, data,
                                         id=f"{{SYSTEM}}/{{obj}}/{{record_id}}/{{digest[:12]}}"))
    if events:
        await provider.publish_many(events)
    return len(events)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--endpoint", default=ENDPOINT, help="the API's base URL")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between polls")
    parser.add_argument("--token", help="bearer token for the API, if it needs one")
    args = parser.parse_args()
    headers = {{"Authorization": f"Bearer {{args.token}}"}} if args.token else {{}}
    seen = {{}}
    async with Provider(load_settings(), source=args.endpoint, tenant=args.tenant) as provider, \\
            httpx.AsyncClient(base_url=args.endpoint, headers=headers, timeout=30) as http:
        while True:
            try:
                n = await poll(provider, http, seen)
                print(f"published {{n}} changes", flush=True)
            except httpx.HTTPError as e:
                print(f"poll failed: {{e}}", flush=True)
            await asyncio.sleep(args.every)


if __name__ == "__main__":
    asyncio.run(main())
'''

_DB_MODULE = '''"""Provider for database {title}: generated by `fabric provider scaffold --database`. Edit freely.

Polls each table by its change column and publishes rows as SaaSRecord events (and the
tables' shapes as SQLSchema events). Run: python provider.py --tenant acme
(settings come from FABRIC_* variables, as for every fabric command).
"""

import argparse
import asyncio

from fabric.providers.builtin.sqlpoll import Table, TablePoller
from fabric.providers.sdk import Provider
from fabric.settings import load_settings

URL = {url!r}
TABLES = {tables!r}  # (table, key column, change column, object)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--url", default=URL)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between polls")
    args = parser.parse_args()
    settings = load_settings()
    async with Provider(settings, source=args.url, tenant=args.tenant) as provider:
        pollers = [
            TablePoller(provider, Table(args.url, table, key, updated), obj=obj,
                        state_file=settings.data_dir / "providers" / f"{{args.tenant}}-{{table}}.json")
            for table, key, updated, obj in TABLES
        ]
        await asyncio.gather(*(p.run(args.every) for p in pollers))


if __name__ == "__main__":
    asyncio.run(main())
'''


def write(
    out: Path, info: dict[str, Any], resources: list[Resource], *, kind: str, owner: str, url: str = ""
) -> list[Path]:
    """Write the manifest, schemas and provider module; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "schemas").mkdir(exist_ok=True)
    slug = _slug(info["title"])
    namespace = f"provider.{slug.replace('-', '_')}"
    written = []
    for r in resources:
        p = out / "schemas" / f"{r.name}.avsc"
        p.write_text(json.dumps(r.avsc(namespace), indent=2) + "\n")
        written.append(p)
    manifest = {
        "provider": {
            "id": slug, "owner": owner, "description": f"changes of {info['title']} ({kind})",
            "source": info["endpoint"] or url, "endpoint": info["endpoint"] or url,
            "auth": {"type": "bearer"} if kind == "openapi" else {"type": "database-url"},
            "produces": [{"event_type": r.event_type, "context_type": "SaaSRecord",
                          "schema": f"schemas/{r.name}.avsc", "key": r.key,
                          ("path" if kind == "openapi" else "table"): r.path} for r in resources],
        }
    }  # fmt: skip
    (out / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    written.append(out / "manifest.yaml")
    if kind == "openapi":
        module = _API_MODULE.format(title=info["title"], system=slug, endpoint=info["endpoint"],
                                    resources=[(r.name, r.path, r.key) for r in resources])  # fmt: skip
    else:
        module = _DB_MODULE.format(title=info["title"], url=url,
                                   tables=[(r.path, r.key, r.updated, r.name) for r in resources])  # fmt: skip
    (out / "provider.py").write_text(module)
    written.append(out / "provider.py")
    return written

"""A database table into SaaSRecord changes (and its shape into SQLSchema), by polling
``updated_at``.

Each poll reads the rows changed since the last one, ordered by (``updated_at``, key),
so rows that share a timestamp are neither skipped nor read twice; the position is
kept in a small state file, so a restarted poller continues where it stopped. The
table's columns are read on every poll and a ``schema.created``/``schema.altered``
event goes out when they change. ``sqlite:///path.db`` works out of the box;
``postgresql://...`` needs ``pip install "psycopg[binary]"``.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from fabric.errors import ConfigError, MissingExtraError
from fabric.events.envelope import Envelope
from fabric.providers.sdk import Provider

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _ident(name: str, what: str) -> str:
    if not IDENT.fullmatch(name):
        raise ConfigError(f"{what} {name!r} is not a plain SQL identifier")
    return name


def _scalar(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


class Table:
    """One table on SQLite or PostgreSQL, read with plain DB-API calls (in a thread)."""

    def __init__(self, url: str, table: str, key: str = "id", updated: str = "updated_at") -> None:
        self.url = url
        self.table = _ident(table, "table")
        self.key = _ident(key, "key column")
        self.updated = _ident(updated, "updated column")
        if url.startswith("sqlite:///"):
            self.kind, self.database = "sqlite", Path(url.removeprefix("sqlite:///")).stem
        elif url.startswith(("postgresql://", "postgres://")):
            self.kind, self.database = "postgres", url.rsplit("/", 1)[-1].split("?")[0] or "postgres"
        else:
            raise ConfigError(f"database url must be sqlite:///file.db or postgresql://..., got {url!r}")
        self.param = "?" if self.kind == "sqlite" else "%s"

    def connect(self) -> Any:
        if self.kind == "sqlite":
            return sqlite3.connect(self.url.removeprefix("sqlite:///"))
        try:
            import psycopg
        except ImportError as e:
            raise MissingExtraError("psycopg (for polling PostgreSQL)", "postgres") from e
        return psycopg.connect(self.url)

    def columns(self, conn: Any) -> list[dict[str, Any]]:
        cur = conn.cursor()
        if self.kind == "sqlite":
            cur.execute(f"PRAGMA table_info({self.table})")
            return [
                {"name": r[1], "type": r[2] or "ANY", "nullable": not r[3], "pk": bool(r[5])} for r in cur.fetchall()
            ]
        cur.execute(
            "SELECT column_name, data_type, is_nullable = 'YES' FROM information_schema.columns "
            "WHERE table_name = %s ORDER BY ordinal_position", (self.table,),
        )  # fmt: skip
        return [{"name": r[0], "type": r[1], "nullable": r[2], "pk": r[0] == self.key} for r in cur.fetchall()]

    def changed(self, conn: Any, after: tuple[Any, Any] | None, limit: int) -> list[dict[str, Any]]:
        cur = conn.cursor()
        q = f"SELECT * FROM {self.table}"
        args: tuple[Any, ...] = ()
        if after is not None:
            p = self.param
            q += f" WHERE {self.updated} > {p} OR ({self.updated} = {p} AND {self.key} > {p})"
            args = (after[0], after[0], after[1])
        cur.execute(q + f" ORDER BY {self.updated}, {self.key} LIMIT {int(limit)}", args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


class TablePoller:
    def __init__(self, provider: Provider, table: Table, *, obj: str | None = None, system: str | None = None,
                 state_file: Path | None = None, batch: int = 1000) -> None:  # fmt: skip
        self.provider = provider
        self.t = table
        self.object = obj or table.table
        self.system = system or table.database
        self.state_file = state_file
        self.batch = batch
        self.after: tuple[Any, Any] | None = None
        self.shape: list[dict[str, Any]] | None = None
        if state_file and state_file.exists():
            saved = json.loads(state_file.read_text())
            self.after = tuple(saved["after"]) if saved.get("after") else None
            self.shape = saved.get("shape")

    def _read(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        conn = self.t.connect()
        try:
            return self.t.columns(conn), self.t.changed(conn, self.after, self.batch)
        finally:
            conn.close()

    def _events(self, columns: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[Envelope]:
        events = []
        if columns != self.shape:
            shape = {"database": self.t.database, "table": self.t.table,
                     "change": "created" if self.shape is None else "altered",
                     "columns": [{"name": c["name"], "type": str(c["type"]), "nullable": bool(c["nullable"])}
                                 for c in columns],
                     "primary_key": [c["name"] for c in columns if c["pk"]]}  # fmt: skip
            events.append(self.provider.event(f"schema.{shape['change']}", f"{self.t.database}.{self.t.table}", shape))
        for row in rows:
            key = str(row[self.t.key])
            fields = {k: _scalar(v) for k, v in row.items()}
            version = row[self.t.updated]
            ev_id = f"{self.t.database}.{self.t.table}/{key}@{_scalar(version)}"
            data = {"system": self.system, "object": self.object, "record_id": key, "fields": fields}
            attrs: dict[str, Any] = {"id": ev_id}
            if isinstance(version, int):
                attrs["sequence"] = version
            elif isinstance(version, datetime):
                attrs["sequence"] = int(version.replace(tzinfo=version.tzinfo or UTC).timestamp() * 1e6)
            events.append(self.provider.event(f"saas.{self.object.lower()}.updated", key, data, **attrs))
        return events

    async def poll_once(self) -> int:
        """Publish what changed since the last poll; returns how many rows."""
        columns, rows = await asyncio.to_thread(self._read)
        events = self._events(columns, rows)
        if events:
            await self.provider.publish_many(events)  # raises PublishError: the position stays
        self.shape = columns
        if rows:
            last = rows[-1]
            self.after = (_scalar(last[self.t.updated]), last[self.t.key])
        if self.state_file:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            self.state_file.write_text(json.dumps({"after": self.after, "shape": self.shape}, default=str))
        return len(rows)

    async def run(self, every_s: float = 5.0, rounds: int | None = None) -> None:
        done = 0
        while rounds is None or done < rounds:
            while await self.poll_once() >= self.batch:
                pass  # more waiting: go on without sleeping
            done += 1
            await asyncio.sleep(every_s)

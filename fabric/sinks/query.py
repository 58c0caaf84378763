"""``fabric query``: run SQL whether or not the fabric is running.

A ClickHouse server is queried directly. The embedded engine directory can be open
in one process only, so when a running sink owns it the SQL goes to that sink's
loopback query server; otherwise this process opens the directory itself.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx

from fabric.errors import FabricError
from fabric.settings import Settings
from fabric.sinks.clickhouse import connect, create_tables, run_query
from fabric.sinks.sink import owner_file


def _owner(settings: Settings) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = json.loads(owner_file(settings).read_text())
        os.kill(int(info["pid"]), 0)
    except (FileNotFoundError, ValueError, KeyError, ProcessLookupError, json.JSONDecodeError):
        return None
    if info.get("path") != str(settings.clickhouse.chdb_path.resolve()):
        return None
    return info


def query(settings: Settings, sql: str) -> tuple[list[str], list[list[Any]]]:
    """Column names and rows of one SQL statement; raises FabricError with ClickHouse's message."""
    if settings.clickhouse.embedded:
        owner = _owner(settings)
        if owner is not None:
            r = httpx.post(f"http://127.0.0.1:{owner['port']}/query", content=sql.encode(), timeout=60)
            body = r.json()
            if r.status_code != 200:
                raise FabricError(body.get("error", r.text))
            return body["columns"], body["rows"]
    client = connect(settings)
    try:
        create_tables(client, settings)
        return run_query(client, sql)
    except FabricError:
        raise
    except Exception as e:
        raise FabricError(str(e)) from e
    finally:
        if hasattr(client, "close"):
            client.close()

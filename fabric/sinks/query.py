"""``fabric query``: run SQL whether or not the fabric is running.

A ClickHouse server is queried directly. The embedded engine directory can be open
in one process only, so when a running sink owns it the SQL goes to that sink's
query channel, a Unix socket only the fabric's own user can open; otherwise this
process opens the directory itself. Either way the statement runs read-only
(``run_statement``): no writes, no settings changes, no file/url/remote functions.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx

from fabric.errors import BackendUnavailable, FabricError
from fabric.settings import Settings
from fabric.sinks.clickhouse import connect, create_tables, run_statement
from fabric.sinks.sink import owner_file


def _owner(settings: Settings) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = json.loads(owner_file(settings).read_text())
        os.kill(int(info["pid"]), 0)
    except (FileNotFoundError, ValueError, KeyError, ProcessLookupError, json.JSONDecodeError):
        return None
    if "socket" not in info:
        return None
    if info.get("path") != str(settings.clickhouse.chdb_path.resolve()):
        return None
    return info


def query(settings: Settings, sql: str, open_local: bool = True) -> tuple[list[str], list[list[Any]]]:
    """Column names and rows of one read-only SQL statement; raises FabricError with
    ClickHouse's message. ``open_local=False`` (the router): never open the embedded
    engine's directory here, only ask the sink that owns it (BackendUnavailable if none)."""
    if settings.clickhouse.embedded:
        owner = _owner(settings)
        if owner is None and not open_local:
            raise BackendUnavailable("the embedded ClickHouse engine is not served: is fabric sink running?")
        if owner is not None:
            transport = httpx.HTTPTransport(uds=str(owner["socket"]))
            with httpx.Client(transport=transport, timeout=60) as http:
                r = http.post("http://sink/query", content=sql.encode())
            body = r.json()
            if r.status_code != 200:
                raise FabricError(body.get("error", r.text))
            return body["columns"], body["rows"]
    client = connect(settings)
    try:
        create_tables(client, settings)
        return run_statement(client, sql)
    except FabricError:
        raise
    except Exception as e:
        raise FabricError(str(e)) from e
    finally:
        if hasattr(client, "close"):
            client.close()

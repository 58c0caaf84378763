"""ClickHouse: tables, batched inserts, and a client for either backend.

``chdb:///dir`` opens the in-process engine (one process owns a directory; it has
no async client, so calls run in a thread); ``http(s)://host:port`` talks to a
ClickHouse server. Tables use ReplacingMergeTree keyed by what identifies a record
(an event by tenant, type, subject, source and id; a DLQ record by where it came
from), so a batch re-inserted after a crash, or an event routed twice, collapses to
one row (``FINAL`` sees it as one already).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from fabric.errors import BackendUnavailable, FabricError, MissingExtraError
from fabric.settings import Settings

EVENT_COLUMNS = [
    "tenant", "id", "type", "context_type", "subject", "source", "time", "received",
    "sequence", "sensitivity", "correlationid", "traceparent", "provider", "data",
    "topic", "partition", "offset",
]  # fmt: skip
AUDIT_COLUMNS = [
    "time", "tenant", "subject", "action", "resource", "decision", "reason", "trace_id", "origin", "seq",
]  # fmt: skip
WORKFLOW_RUN_COLUMNS = [
    "tenant", "run_id", "workflow", "version", "status", "reason", "trigger_id", "trigger_type",
    "started", "ended", "updated", "phases",
]  # fmt: skip
WORKFLOW_STEP_COLUMNS = [
    "tenant", "run_id", "workflow", "version", "phase", "step", "system", "action", "attempt", "outcome",
    "error", "started", "ended", "duration_ms",
]  # fmt: skip
DLQ_COLUMNS = [
    "reason", "pointer", "error_class", "original", "headers", "source_topic",
    "source_partition", "source_offset", "failed_at", "topic", "partition", "offset",
]  # fmt: skip


def ddl(db: str) -> list[str]:
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"""CREATE TABLE IF NOT EXISTS {db}.events (
            tenant String, id String, type LowCardinality(String),
            context_type LowCardinality(String), subject String, source String,
            time DateTime64(6, 'UTC'), received DateTime64(6, 'UTC'), sequence Int64,
            sensitivity LowCardinality(String), correlationid Nullable(String),
            traceparent Nullable(String), provider Nullable(String), data String,
            topic LowCardinality(String), partition UInt32, offset UInt64
        ) ENGINE = ReplacingMergeTree ORDER BY (tenant, context_type, subject, source, id)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.dlq (
            reason String, pointer String, error_class LowCardinality(String),
            original String, headers String, source_topic String,
            source_partition Int32, source_offset Int64, failed_at DateTime64(6, 'UTC'),
            topic LowCardinality(String), partition UInt32, offset UInt64
        ) ENGINE = ReplacingMergeTree ORDER BY (source_topic, source_partition, source_offset, topic)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.audit (
            time DateTime64(3, 'UTC'), tenant String, subject String, action LowCardinality(String),
            resource String, decision LowCardinality(String), reason String, trace_id String,
            origin String, seq UInt64
        ) ENGINE = ReplacingMergeTree ORDER BY (tenant, time, origin, seq)""",
        # a run's latest row wins (updated); a step has a row per attempt and outcome
        f"""CREATE TABLE IF NOT EXISTS {db}.workflow_runs (
            tenant String, run_id String, workflow String, version UInt32, status LowCardinality(String),
            reason String, trigger_id String, trigger_type LowCardinality(String),
            started DateTime64(3, 'UTC'), ended Nullable(DateTime64(3, 'UTC')), updated DateTime64(3, 'UTC'),
            phases String
        ) ENGINE = ReplacingMergeTree(updated) ORDER BY (tenant, run_id)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.workflow_steps (
            tenant String, run_id String, workflow String, version UInt32, phase String, step String,
            system LowCardinality(String), action LowCardinality(String), attempt UInt32,
            outcome LowCardinality(String), error String, started DateTime64(3, 'UTC'),
            ended DateTime64(3, 'UTC'), duration_ms UInt64
        ) ENGINE = ReplacingMergeTree ORDER BY (tenant, run_id, step, attempt, outcome)""",
    ]


_lock = threading.Lock()


def connect(settings: Settings) -> Any:
    """A clickhouse-connect client for the configured backend."""
    ch = settings.clickhouse
    try:
        import clickhouse_connect
    except ImportError as e:  # pragma: no cover - a core dependency
        raise MissingExtraError("clickhouse-connect", "embedded") from e
    if ch.embedded:
        try:
            import chdb  # noqa: F401
        except ImportError as e:
            raise MissingExtraError("chdb (the embedded ClickHouse engine)", "embedded") from e
        path = ch.chdb_path
        path.mkdir(parents=True, exist_ok=True)
        try:
            return clickhouse_connect.get_client(dsn=f"chdb://{path.resolve()}")
        except Exception as e:
            if "lock" in str(e).lower():
                raise BackendUnavailable(f"the ClickHouse engine directory {path} is owned by another process") from e
            raise
    u = urlparse(ch.url)
    try:
        return clickhouse_connect.get_client(
            host=u.hostname, port=u.port or 8123, username=u.username or "default",
            password=u.password or "", secure=u.scheme == "https",
        )  # fmt: skip
    except Exception as e:
        raise BackendUnavailable(f"ClickHouse at {u.hostname}:{u.port} did not answer: {e}") from e


def create_tables(client: Any, settings: Settings) -> None:
    for stmt in ddl(settings.clickhouse.database):
        client.command(stmt)


#: functions that reach outside the tables (files, the network, other servers, programs).
#: ``readonly=1`` already refuses the table functions among them; the scalar ``file()`` it
#: does not, so every name here is refused wherever it appears in the query.
FORBIDDEN_FUNCTIONS = frozenset({
    "file", "url", "urlcluster", "s3", "s3cluster", "gcs", "oss", "cosn", "hdfs", "hdfscluster", "remote",
    "remotesecure", "cluster", "clusterallreplicas", "executable", "executablepool", "mysql", "postgresql",
    "sqlite", "mongodb", "redis", "jdbc", "odbc", "azureblobstorage", "azureblobstoragecluster", "iceberg",
    "icebergs3", "deltalake", "hudi", "input", "dictionary", "dictget", "catboostevaluate", "filesystemavailable",
    "filesystemcapacity", "filesystemunreserved", "url_cluster", "arrowflight", "ytsaurus", "loop",
})  # fmt: skip
_FUNCTION = re.compile(r"^\s*(?:Function|TableFunction) (\w+)", re.MULTILINE)
READ_ONLY = {"readonly": 1}


def run_read_only(client: Any, sql: str) -> tuple[list[str], list[list[Any]]]:
    """One read-only SQL statement for ``fabric query`` and ``/v1/audit``: column names and rows.

    The engine enforces it (``readonly=1``: no writes, no DDL, no settings changes, no
    table functions); before that, the engine's own parser lists every function the
    statement calls (``EXPLAIN AST``), and any in ``FORBIDDEN_FUNCTIONS`` is refused,
    however it is spelled or commented. Raises FabricError naming what was refused."""
    if len(sql) > 100_000:
        raise FabricError("the query is over 100,000 characters")
    try:
        with _lock:
            ast = client.query(f"EXPLAIN AST {sql}", settings=READ_ONLY)
    except Exception as e:
        raise FabricError(f"invalid query: {_first_line(e)}") from None
    for line in (r[0] for r in ast.result_rows):
        m = _FUNCTION.match(line)
        if m and m.group(1).lower() in FORBIDDEN_FUNCTIONS:
            raise FabricError(f"function {m.group(1)}() is not allowed: queries read the fabric's tables only")
    try:
        with _lock:
            result = client.query(sql, settings=READ_ONLY)
    except Exception as e:
        raise FabricError(_first_line(e)) from None
    return list(result.column_names), [list(r) for r in result.result_rows]


#: the only statements that change anything: taking a table offline and back (repairs)
MAINTENANCE = re.compile(r"(?i)\s*(DETACH|ATTACH)\s+TABLE\s+fabric\.(events|dlq|audit)\s*;?\s*")


def run_statement(client: Any, sql: str, writer: Any = None) -> tuple[list[str], list[list[Any]]]:
    """``run_read_only`` on ``client``, except the exact maintenance statements ``DETACH|ATTACH
    TABLE fabric.<events|dlq|audit>`` (nothing else that writes, nothing in them to inject),
    run on ``writer`` (default ``client``). Give a long-lived writer a ``client`` of its own:
    the embedded engine leaves a session read-only after a refused read-only statement."""
    m = MAINTENANCE.fullmatch(sql)
    if m is None:
        return run_read_only(client, sql)
    with _lock:
        (writer or client).command(f"{m.group(1).upper()} TABLE fabric.{m.group(2).lower()}")
    return [], []


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:500] if text else type(e).__name__


def insert(client: Any, table: str, rows: list[list[Any]], columns: list[str]) -> None:
    with _lock:
        client.insert(table, rows, column_names=columns)


def table_answers(client: Any, table: str) -> bool:
    """True when the engine is up and the table is there (so a failed insert was the rows' fault)."""
    try:
        with _lock:
            client.query(f"SELECT 1 FROM {table} LIMIT 0")
        return True
    except Exception:
        return False


class Unavailable(BackendUnavailable):
    """The engine or table did not answer; retry the whole batch later."""


def insert_isolating(
    insert_rows: Callable[[list[list[Any]]], None], answers: Callable[[], bool], rows: list[list[Any]]
) -> list[tuple[list[Any], str]]:
    """Insert ``rows``; when ClickHouse refuses them while the table answers, split the batch
    until the refused rows are found. Returns them with ClickHouse's reason; raises
    ``Unavailable`` when the engine or table is away (retry everything later)."""
    try:
        insert_rows(rows)
        return []
    except Exception as e:
        if not answers():
            raise Unavailable(str(e)) from e
        if len(rows) == 1:
            return [(rows[0], f"ClickHouse refused the row: {e}")]
    mid = len(rows) // 2
    return insert_isolating(insert_rows, answers, rows[:mid]) + insert_isolating(insert_rows, answers, rows[mid:])

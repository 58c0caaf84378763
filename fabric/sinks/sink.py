"""``fabric sink``: typed topics and ``ctx.dlq`` -> ClickHouse, in batches.

Its own consumer group, so a slow or failing ClickHouse never holds up the worker:
rows are inserted in batches (``clickhouse.batch_rows`` or every
``clickhouse.flush_interval_s``), offsets are committed only after an insert
succeeded, and a failed insert is retried with backoff. The process owns the
embedded engine directory and answers ``fabric query`` (read-only) on a Unix socket
that only its own user can open, recorded in ``.fabric/run/chdb-owner.json``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from aiokafka.errors import KafkaError
from prometheus_client import Counter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fabric import kafka
from fabric.errors import FabricError, InvalidEvent
from fabric.events.catalogue import Catalogue
from fabric.events.codecs import decode_typed
from fabric.events.times import parse_rfc3339
from fabric.kafka.topics import all_topics, dlq_topic, ensure_topics, typed_topics
from fabric.registry.store import RegistryFollower, SchemaStore
from fabric.retry import until_done
from fabric.settings import Settings
from fabric.sinks.clickhouse import (
    AUDIT_COLUMNS,
    DLQ_COLUMNS,
    EVENT_COLUMNS,
    WORKFLOW_RUN_COLUMNS,
    WORKFLOW_STEP_COLUMNS,
    Unavailable,
    connect,
    create_tables,
    insert,
    insert_isolating,
    run_statement,
    table_answers,
)

log = logging.getLogger(__name__)
ROWS = Counter("fabric_sink_rows_total", "Rows written to ClickHouse", ["table"])
FAILURES = Counter("fabric_sink_insert_failures_total", "Failed insert attempts", ["table"])

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def event_row(rec: Any, catalogue: Catalogue) -> list[Any]:
    ct, ev = decode_typed(rec.value, catalogue)
    return [
        ev["tenant"], ev["id"], ev["type"], ct.name, ev["subject"], ev["source"], ev["time"],
        ev.get("receivedtime") or ev["time"], ev.get("sequence") or 0, ev["sensitivity"],
        ev.get("correlationid"), ev.get("traceparent"), ev.get("provider"),
        orjson.dumps(ev["data"]).decode(), rec.topic, rec.partition, rec.offset,
    ]  # fmt: skip


def dlq_row(rec: Any) -> list[Any]:
    h = {k: v for k, v in rec.headers or ()}

    def text(name: str, default: str = "") -> str:
        return str(h.get(name, default.encode()).decode(errors="replace"))

    failed = text("fabric_failed_at")
    try:
        failed_at = parse_rfc3339(failed) if failed else datetime.now(UTC)
    except ValueError:
        failed_at = datetime.now(UTC)
    headers = {k: v.decode(errors="replace") for k, v in h.items() if not k.startswith("fabric_")}
    return [
        text("fabric_error_reason", "unknown"), text("fabric_error_pointer"),
        text("fabric_error_class", "InvalidEvent"), rec.value or b"", json.dumps(headers),
        text("fabric_original_topic"), int(text("fabric_original_partition", "-1") or -1),
        int(text("fabric_original_offset", "-1") or -1), failed_at, rec.topic, rec.partition,
        rec.offset,
    ]  # fmt: skip


def unreadable_row(rec: Any, reason: str) -> list[Any]:
    """A DLQ row for a typed-topic record the sink cannot read (a misbehaving producer)."""
    now = datetime.now(UTC)
    return [reason, "", "InvalidEvent", rec.value or b"", "{}", rec.topic, rec.partition, rec.offset, now,
            rec.topic, rec.partition, rec.offset]  # fmt: skip


def audit_rows(rec: Any) -> list[list[Any]]:
    """The audit records of one ``ctx.audit`` message (NDJSON, see ``fabric.security.audit``)."""
    rows = []
    for line in (rec.value or b"").splitlines():
        a = orjson.loads(line)
        rows.append([
            datetime.fromtimestamp(a["time_ms"] / 1000, UTC), a["tenant"], a.get("subject", ""), a["action"],
            a.get("resource", ""), a["decision"], a.get("reason", ""), a.get("trace_id", ""),
            a.get("origin", ""), a.get("seq", 0),
        ])  # fmt: skip
    return rows


def _ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def workflow_row(rec: Any) -> tuple[str, list[Any]]:
    """A ``workflow-history`` record as (table, row): a run's state or a step's attempt."""
    h = orjson.loads(rec.value or b"")
    if h["kind"] == "run":
        return "workflow_runs", [
            h["tenant"], h["run_id"], h["workflow"], h["version"], h["status"], h.get("reason", ""),
            h.get("trigger_id", ""), h.get("trigger_type", ""), _ms(h["started_ms"]),
            _ms(h["ended_ms"]) if h.get("ended_ms") else None, _ms(h["updated_ms"]),
            orjson.dumps(h.get("phases", {})).decode(),
        ]  # fmt: skip
    return "workflow_steps", [
        h["tenant"], h["run_id"], h["workflow"], h["version"], h["phase"], h["step"], h.get("system", ""),
        h.get("action", ""), h["attempt"], h["outcome"], h.get("error", ""), _ms(h["started_ms"]),
        _ms(h["ended_ms"]), max(0, h["ended_ms"] - h["started_ms"]),
    ]  # fmt: skip


def refused_row(table: str, row: list[Any], reason: str) -> list[Any]:
    """A DLQ row for a row ClickHouse refused; the row itself is kept as JSON."""
    cols = EVENT_COLUMNS if table == "events" else DLQ_COLUMNS
    original = orjson.dumps(dict(zip(cols, row, strict=False)), default=_default)
    return [reason, "", "ClickHouseRefused", original, "{}", f"clickhouse.{table}", -1, -1,
            datetime.now(UTC), f"clickhouse.{table}", 0, 0]  # fmt: skip


class Sink:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalogue = Catalogue.load(settings.schemas_dir)
        self.client: Any = None
        #: a session of its own for ``fabric query``: a refused read-only statement leaves its
        #: session read-only, which must never happen to the session that inserts
        self.reader: Any = None
        self.db = settings.clickhouse.database

    async def open(self) -> None:
        async for attempt in until_done("sink: ClickHouse not ready", Exception):
            with attempt:
                self.client = await asyncio.to_thread(connect, self.settings)
                await asyncio.to_thread(create_tables, self.client, self.settings)
                self.reader = await asyncio.to_thread(connect, self.settings)

    async def _insert(self, table: str, rows: list[list[Any]], columns: list[str]) -> None:
        """Insert with retries; returns only once every row is in ClickHouse, or, for rows
        ClickHouse itself refuses while the table answers, in ``fabric.dlq`` with its reason."""
        full = f"{self.db}.{table}"
        async for attempt in until_done(
            f"sink: {full} unavailable, {len(rows)} rows waiting", Unavailable, initial_s=0.2
        ):
            with attempt:
                try:
                    refused = await asyncio.to_thread(
                        insert_isolating,
                        lambda part: insert(self.client, full, part, columns),
                        lambda: table_answers(self.client, full),
                        rows,
                    )
                except Unavailable:
                    FAILURES.labels(table).inc()
                    raise
        ROWS.labels(table).inc(len(rows) - len(refused))
        if refused:
            log.warning("sink: ClickHouse refused %d rows of %s: %s", len(refused), table, refused[0][1])
            await self._insert("dlq", [refused_row(table, r, why) for r, why in refused], DLQ_COLUMNS)

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        await ensure_topics(s, all_topics(s, self.catalogue))
        dlq, audit, history = dlq_topic(s), s.topic("audit"), s.topic("workflow-history")
        await ensure_topics(s, [audit, history])
        # rows wait up to flush_interval_s anyway: no need for Tansu's 5 ms fetch wait here
        consumer = kafka.consumer(
            s,
            *typed_topics(s, self.catalogue),
            dlq,
            audit,
            history,
            group=f"{s.kafka.group_prefix}.sink",
            fetch_max_wait_ms=500,
        )
        await kafka.start(s, consumer)
        follower = RegistryFollower(s, SchemaStore(self.catalogue))
        await follower.start()
        events: list[list[Any]] = []
        dead: list[list[Any]] = []
        trail: list[list[Any]] = []
        flows: dict[str, list[list[Any]]] = {"workflow_runs": [], "workflow_steps": []}
        loop = asyncio.get_running_loop()
        last_flush = loop.time()
        waiting = 0
        try:
            while not stop.is_set():
                try:
                    # rows waiting are flushed on time; with none, a fetch returns when records come
                    wait_ms = 200 if waiting else 1000
                    batch = await consumer.getmany(timeout_ms=wait_ms, max_records=s.clickhouse.batch_rows)
                except KafkaError as e:
                    log.warning("sink: %s", e)
                    await asyncio.sleep(1)
                    continue
                if follower.store.unknown_ids(
                    r.value for tp, rs in batch.items() if tp.topic not in (audit, dlq, history) for r in rs
                ):
                    await follower.catch_up()  # a schema version registered moments ago
                for tp, recs in batch.items():
                    for r in recs:
                        if tp.topic == dlq:
                            dead.append(dlq_row(r))
                            continue
                        if tp.topic == history:
                            try:
                                table, row = workflow_row(r)
                                flows[table].append(row)
                            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                                dead.append(unreadable_row(r, f"sink could not read the workflow record: {e}"))
                            continue
                        if tp.topic == audit:
                            try:
                                trail += audit_rows(r)
                            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                                dead.append(unreadable_row(r, f"sink could not read the audit record: {e}"))
                            continue
                        try:
                            events.append(event_row(r, self.catalogue))
                        except (InvalidEvent, KeyError, TypeError) as e:
                            dead.append(unreadable_row(r, f"sink could not read the typed record: {e}"))
                waiting = len(events) + len(dead) + len(trail) + sum(map(len, flows.values()))
                if waiting and (
                    waiting >= s.clickhouse.batch_rows or loop.time() - last_flush >= s.clickhouse.flush_interval_s
                ):
                    await self._flush(events, dead, trail, flows)
                    await _commit(consumer)
                    events, dead, trail = [], [], []
                    flows = {"workflow_runs": [], "workflow_steps": []}
                    last_flush = loop.time()
                    waiting = 0
                elif not waiting:
                    last_flush = loop.time()
        finally:
            if events or dead or trail or any(flows.values()):
                await self._flush(events, dead, trail, flows)
                await _commit(consumer)
            await consumer.stop()
            await follower.stop()

    async def _flush(
        self, events: list[list[Any]], dead: list[list[Any]], trail: list[list[Any]],
        flows: dict[str, list[list[Any]]] | None = None,
    ) -> None:  # fmt: skip
        if events:
            await self._insert("events", events, EVENT_COLUMNS)
        if dead:
            await self._insert("dlq", dead, DLQ_COLUMNS)
        if trail:
            await self._insert("audit", trail, AUDIT_COLUMNS)
        for table, rows in (flows or {}).items():
            if rows:
                cols = WORKFLOW_RUN_COLUMNS if table == "workflow_runs" else WORKFLOW_STEP_COLUMNS
                await self._insert(table, rows, cols)


async def _commit(consumer: Any) -> None:
    """Commit what was flushed. A commit refused because the group is rebalancing (a broker
    died, a member joined) is not an error for the sink: the rows are in ClickHouse, and
    whoever gets those partitions reads them again, which the tables collapse (they are
    keyed by Kafka position)."""
    try:
        await consumer.commit()
    except KafkaError as e:  # CommitFailedError, RebalanceInProgressError, a broker away
        log.warning("sink: offsets not committed (%s); the next owner re-reads rows already written", e)


# ------------------------------------------------------------------ query server


def owner_file(settings: Settings) -> Path:
    return settings.data_dir / "run" / "chdb-owner.json"


def query_socket(settings: Settings) -> Path:
    """The query channel's Unix socket: mode 0600 in a 0700 directory, so only the user
    running the fabric can connect (a browser page or another local user cannot)."""
    import hashlib
    import tempfile

    engine = hashlib.sha256(str(settings.clickhouse.chdb_path.resolve()).encode()).hexdigest()[:12]
    path = (settings.data_dir / "run" / f"sink-query-{engine}.sock").resolve()
    if len(str(path)) > 100:  # AF_UNIX paths are limited to 108 bytes
        path = Path(tempfile.gettempdir()) / f"fabric-{os.getuid()}-{engine}" / "sink-query.sock"
    return path


def bind_private(path: Path) -> socket.socket:
    """A listening Unix socket only this user can connect to (created 0600, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return sock


def query_app(sink: Sink) -> Starlette:
    """Read-only SQL for ``fabric query`` (``run_statement``: no writes, no settings, no
    file/url/remote functions)."""

    async def query(request: Request) -> Response:
        try:
            sql = (await request.body()).decode()
            cols, rows = await asyncio.to_thread(run_statement, sink.reader, sql, sink.client)
        except (FabricError, UnicodeDecodeError) as e:
            return Response(orjson.dumps({"error": str(e)}), status_code=400, media_type="application/json")
        return Response(
            orjson.dumps({"columns": cols, "rows": rows}, default=_default),
            media_type="application/json",
        )

    return Starlette(routes=[Route("/query", query, methods=["POST"])])


def _default(o: Any) -> Any:
    if isinstance(o, bytes):
        return o.decode(errors="replace")
    if isinstance(o, datetime):
        return o.isoformat()
    return str(o)


async def serve(settings: Settings) -> None:
    """Run the sink and, for the embedded engine, its query server, until SIGINT/SIGTERM."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sink = Sink(settings)
    await sink.open()
    server = None
    owner = owner_file(settings)
    if settings.clickhouse.embedded:
        path = query_socket(settings)
        sock = bind_private(path)
        config = uvicorn.Config(query_app(sink), log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        server_task = asyncio.create_task(server.serve(sockets=[sock]))
        owner.parent.mkdir(parents=True, exist_ok=True)
        owner.write_text(json.dumps({
            "pid": os.getpid(), "socket": str(path), "path": str(settings.clickhouse.chdb_path.resolve()),
        }))  # fmt: skip
    log.info("sink running")
    try:
        await sink.run(stop)
    finally:
        if server is not None:
            server.should_exit = True
            await server_task
            owner.unlink(missing_ok=True)
            query_socket(settings).unlink(missing_ok=True)

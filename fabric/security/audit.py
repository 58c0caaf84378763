"""The audit trail: one record per pull, listing, push subscription, assembly, ingest and denial.

Records are buffered in the router and sent to ``ctx.audit`` every 200 ms as
NDJSON batches (one Kafka record per batch keeps the cost per request at about a
microsecond); ``fabric sink`` writes them to ClickHouse's ``audit`` table, where
``fabric audit`` reads them. While Kafka is unreachable records wait in memory, up to
``security.audit_buffer``; past that the oldest are dropped and counted
(``fabric_audit_dropped_total``), never silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import deque

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import Counter

from fabric.security.tokens import Principal

log = logging.getLogger(__name__)

RECORDED = Counter("fabric_audit_records_total", "Audit records made", ["decision"])
DROPPED = Counter("fabric_audit_dropped_total", "Audit records dropped because Kafka was unreachable too long")


class AuditRecord(msgspec.Struct, omit_defaults=True):
    time_ms: int
    tenant: str
    subject: str
    action: str
    resource: str
    decision: str  # 'allow' | 'deny'
    reason: str = ""
    trace_id: str = ""
    origin: str = ""
    seq: int = 0  # with origin, tells a record sent twice (after a Kafka error) from a new one


def trace_id_of(traceparent: str | None) -> str:
    """The W3C trace id of a ``traceparent`` header, or a new one."""
    if traceparent:
        parts = traceparent.split("-")
        if len(parts) >= 3 and len(parts[1]) == 32:
            return parts[1]
    return f"{random.getrandbits(128):032x}"


class AuditLog:
    def __init__(self, producer: AIOKafkaProducer, topic: str, limit: int = 100_000, origin: str = "router") -> None:
        self.producer = producer
        self.topic = topic
        self.limit = limit
        self.origin = f"{origin}:{os.getpid()}"
        # encoded as recorded, so a flush is a join, not a pause; the oldest go first when full
        self.pending: deque[bytes] = deque(maxlen=limit)
        self.seq = 0
        self._task: asyncio.Task[None] | None = None
        self._enc = msgspec.json.Encoder()
        self._recorded = asyncio.Event()  # set by the first record after a flush
        self._allowed, self._denied = RECORDED.labels("allow"), RECORDED.labels("deny")

    def record(
        self, who: Principal | None, action: str, resource: str, decision: str, reason: str = "",
        trace_id: str = "", tenant: str = "",
    ) -> None:  # fmt: skip
        tenant, sub = (who.tenant, who.sub) if who else (tenant, "")
        t = int(time.time() * 1000)
        rec = AuditRecord(t, tenant, sub, action, resource, decision, reason, trace_id, self.origin, self.seq)
        if len(self.pending) == self.limit:
            DROPPED.inc()
        self.pending.append(self._enc.encode(rec))
        self._recorded.set()
        (self._allowed if decision == "allow" else self._denied).inc()
        self.seq += 1

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name="audit")

    async def stop(self) -> None:
        """Flush what is waiting (bounded by the producer's timeout) and stop."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(KafkaError, TimeoutError):
            await asyncio.wait_for(self.flush(), 5)

    async def _flush_forever(self, every: float = 0.2) -> None:
        while True:
            await self._recorded.wait()  # nothing to send: nothing to wake for
            await asyncio.sleep(every)
            self._recorded.clear()
            try:
                await self.flush()
            except (KafkaError, TimeoutError) as e:
                log.warning("audit: cannot reach Kafka (%s); %d records waiting", e, len(self.pending))
                await asyncio.sleep(1)
            if self.pending:  # put back after a failure, or recorded during the flush
                self._recorded.set()

    async def flush(self) -> None:
        batch = list(self.pending)
        self.pending.clear()
        if not batch:
            return
        try:
            futures = []
            for i in range(0, len(batch), 1000):
                value = b"\n".join(batch[i : i + 1000])
                futures.append(await self.producer.send(self.topic, value))
            await asyncio.gather(*futures)
        except BaseException:
            # try again (duplicates are possible); what no longer fits is counted as dropped
            lost = max(0, len(self.pending) + len(batch) - self.limit)
            DROPPED.inc(lost)
            newer = list(self.pending)
            self.pending.clear()
            self.pending.extend(batch[lost:])
            self.pending.extend(newer)
            raise

"""The audit buffer: bounded, keeps order, keeps records across a failed send."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaTimeoutError

from fabric.security.audit import DROPPED, AuditLog, trace_id_of


class Producer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.fail = False

    async def send(self, topic: str, value: bytes) -> Any:
        if self.fail:
            raise KafkaTimeoutError()
        self.sent.append(value)

        async def done() -> None:
            return None

        return done()


def lines(p: Producer) -> list[dict[str, Any]]:
    return [orjson.loads(line) for v in p.sent for line in v.splitlines()]


async def test_records_survive_a_failed_send_in_order_and_the_bound_is_counted() -> None:
    p = Producer()
    log = AuditLog(p, "ctx.audit", limit=5)  # type: ignore[arg-type]
    for i in range(3):
        log.record(None, "context.read", f"r{i}", "allow", tenant="acme")
    p.fail = True
    with pytest.raises(KafkaTimeoutError):
        await log.flush()
    before = DROPPED._value.get()
    for i in range(3, 6):
        log.record(None, "context.read", f"r{i}", "deny", "403 x", tenant="acme")
    assert DROPPED._value.get() - before == 1  # 6 records, room for 5: the oldest went
    p.fail = False
    await log.flush()
    assert [r["resource"] for r in lines(p)] == ["r1", "r2", "r3", "r4", "r5"]
    assert [r["seq"] for r in lines(p)] == [1, 2, 3, 4, 5]


def test_trace_ids_come_from_traceparent_or_are_new() -> None:
    assert trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") == "4bf92f3577b34da6a3ce929d0e0e4736"
    a, b = trace_id_of(None), trace_id_of("garbage")
    assert len(a) == len(b) == 32 and a != b

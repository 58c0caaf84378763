"""Dead letters: a record the pipeline cannot use goes to ``ctx.dlq`` with why and where from."""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka import ConsumerRecord

from fabric.errors import InvalidEvent
from fabric.kafka.send import OutRecord

#: An original larger than this is cut to it in the DLQ (the size is kept in a header).
DLQ_KEEP_BYTES = 64 * 1024


def dlq_record(rec: ConsumerRecord[bytes, bytes], err: InvalidEvent, dlq: str) -> OutRecord:
    """A DLQ record: the original bytes and headers, plus why and where it came from."""
    value = rec.value or b""
    headers = list(rec.headers or ())
    if len(value) > DLQ_KEEP_BYTES:
        headers.append(("fabric_original_size", str(len(value)).encode()))
        value = value[:DLQ_KEEP_BYTES]
    headers += [
        ("fabric_error_reason", err.reason.encode()),
        ("fabric_error_pointer", err.pointer.encode()),
        ("fabric_error_class", type(err).__name__.encode()),
        ("fabric_original_topic", rec.topic.encode()),
        ("fabric_original_partition", str(rec.partition).encode()),
        ("fabric_original_offset", str(rec.offset).encode()),
        ("fabric_failed_at", datetime.now(UTC).isoformat().encode()),
    ]
    return OutRecord(dlq, rec.key, value, headers)

"""The route stage: ``ctx.ingest`` -> decode -> validate -> enrich -> typed topic, or ``ctx.dlq``.

Batch-oriented: one ``getmany`` brings up to ``worker.batch_max`` records, every record
is turned into an output record in a tight loop (no awaits per event), all sends are
queued at once and awaited together, then the consumed offsets are committed. A
crash between send and commit replays the batch; the materializer's sequence and
offset checks make that harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiokafka import ConsumerRecord

from fabric.errors import InvalidEvent
from fabric.pipeline.enrich import Enricher
from fabric.settings import Settings
from fabric.topics.codecs import decode_ingest, encode_typed, micros, validate
from fabric.topics.envelope import ATTRIBUTES, LEVEL, Envelope
from fabric.topics.headers import CACHE_JSON, CACHE_KEY, PROVIDER_HEADER
from fabric.topics.registry import Registry

log = logging.getLogger(__name__)


@dataclass(slots=True)
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    #: a partition chosen by the caller; None: by the key (murmur2, as the Java client)
    partition: int | None = None


@dataclass(slots=True)
class RouteResult:
    ok: list[OutRecord] = field(default_factory=list)
    dead: list[OutRecord] = field(default_factory=list)


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


_json = msgspec.json.Encoder()


def cache_headers(env: Envelope) -> list[tuple[str, bytes]]:
    """What the materializer needs, beside the Avro value, so it need not decode it:
    the event as the cache serves it (JSON, nulls left out) and its key fields."""
    event = {k: v for k in ATTRIBUTES if (v := getattr(env, k)) is not None}
    event["data"] = env.data
    assert env.time is not None and env.sequence is not None
    return [
        (CACHE_JSON, _json.encode(event)),
        (
            CACHE_KEY,
            _json.encode(
                [
                    env.sequence,
                    micros(env.time) // 1000,
                    env.tenant,
                    env.type,
                    env.subject,
                    env.id,
                    LEVEL[env.sensitivity],
                ]
            ),
        ),
    ]


class Router:
    """Pure batch logic of the route stage, kept free of I/O so it can be unit-tested."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.dlq = settings.topic("dlq")
        self.topics = {name: settings.topic(ct.topic) for name, ct in registry.context_types.items()}
        self.enrich = Enricher()
        self.max_bytes = settings.max_event_bytes

    def route(self, records: list[ConsumerRecord[bytes, bytes]]) -> RouteResult:
        out = RouteResult()
        now = datetime.now(UTC)
        registry = self.registry
        for rec in records:
            headers: Any = rec.headers or ()
            try:
                if rec.value is not None and len(rec.value) > self.max_bytes:
                    raise InvalidEvent(f"event is {len(rec.value)} bytes, over the limit of {self.max_bytes}")
                env = decode_ingest(rec.value, headers, registry)
                if len(env.data) > self.max_bytes:  # Avro can decode into much more than it was
                    raise InvalidEvent(f"decoded data is {len(env.data)} bytes, over the limit of {self.max_bytes}")
                ct, data = validate(env, registry)
                provider = next((v.decode(errors="replace") for k, v in headers if k == PROVIDER_HEADER), None)
                env = self.enrich(env, ct, provider, now)
                value = encode_typed(env, ct, data, registry)
            except InvalidEvent as e:
                out.dead.append(dlq_record(rec, e, self.dlq))
                continue
            except Exception as e:
                log.exception("unexpected error routing %s[%d]@%d", rec.topic, rec.partition, rec.offset)
                out.dead.append(dlq_record(rec, InvalidEvent(f"internal error: {type(e).__name__}: {e}"), self.dlq))
                continue
            out.ok.append(OutRecord(self.topics[ct.name], env.key(), value, cache_headers(env)))
        return out

"""The route stage: ``ctx.ingest`` -> decode -> validate -> enrich -> processors -> typed
topic, or ``ctx.dlq``.

``Routing`` is the batch logic, free of I/O so it can be unit-tested: every record is
turned into an output record in a tight loop (no awaits per event), the configured
processors (``fabric.pipeline.processors``) run once over the whole batch, and what
they leave is encoded. ``RouteStage`` is the Kafka loop around it: one transaction per
batch (records and consumed offsets together, see ``TransactionalStage``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiokafka import ConsumerRecord

from fabric.errors import InvalidEvent
from fabric.events.catalogue import Catalogue
from fabric.events.codecs import decode_ingest, encode_typed, micros, pointer_of, validate
from fabric.events.envelope import ATTRIBUTES, LEVEL, Envelope
from fabric.events.headers import CACHE_JSON, CACHE_KEY, PROVIDER_HEADER, REDACTED_HEADER
from fabric.kafka.send import OutRecord
from fabric.kafka.topics import all_topics, ensure_topics, ingest_topic
from fabric.pipeline.deadletter import dlq_record
from fabric.pipeline.enrich import Enricher
from fabric.pipeline.processors import Event, Processor, load_processors, run_processors
from fabric.pipeline.stage import EVENTS, TransactionalStage
from fabric.settings import Settings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RouteResult:
    ok: list[OutRecord] = field(default_factory=list)
    dead: list[OutRecord] = field(default_factory=list)
    dropped: int = 0  # filtered out by a processor


_json = msgspec.json.Encoder()


def cache_headers(env: Envelope, extensions: dict[str, Any] | None = None) -> list[tuple[str, bytes]]:
    """What the materializer needs, beside the Avro value, so it need not decode it:
    the event as the cache serves it (JSON, nulls left out, with the processors'
    extension attributes) and its key fields (the last one its quality, if scored)."""
    event: dict[str, Any] = {k: v for k in ATTRIBUTES if (v := getattr(env, k)) is not None}
    if extensions:
        event.update(extensions)
    event["data"] = env.data
    assert env.time is not None and env.sequence is not None
    key = [env.sequence, micros(env.time) // 1000, env.tenant, env.type, env.subject, env.id, LEVEL[env.sensitivity]]
    if extensions and "quality" in extensions:
        key.append(extensions["quality"])
    return [(CACHE_JSON, _json.encode(event)), (CACHE_KEY, _json.encode(key))]


class Routing:
    """The route stage's batch logic: records in, typed records and dead letters out."""

    def __init__(self, settings: Settings, catalogue: Catalogue, processors: list[Processor] | None = None) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.dlq = settings.topic("dlq")
        self.topics = {name: settings.topic(ct.topic) for name, ct in catalogue.context_types.items()}
        self.enrich = Enricher()
        self.processors = load_processors(settings, catalogue) if processors is None else processors
        self.max_bytes = settings.max_event_bytes

    def route(self, records: list[ConsumerRecord[bytes, bytes]]) -> RouteResult:
        out = RouteResult()
        now = datetime.now(UTC)
        catalogue = self.catalogue
        accepted: list[tuple[ConsumerRecord[bytes, bytes], Event, Any]] = []
        for rec in records:
            headers: Any = rec.headers or ()
            try:
                if rec.value is not None and len(rec.value) > self.max_bytes:
                    raise InvalidEvent(f"event is {len(rec.value)} bytes, over the limit of {self.max_bytes}")
                env = decode_ingest(rec.value, headers, catalogue)
                if len(env.data) > self.max_bytes:  # Avro can decode into much more than it was
                    raise InvalidEvent(f"decoded data is {len(env.data)} bytes, over the limit of {self.max_bytes}")
                ct, data = validate(env, catalogue)
                provider = masked = None
                for k, v in headers:
                    if k == PROVIDER_HEADER:
                        provider = v.decode(errors="replace")
                    elif k == REDACTED_HEADER and v.isdigit():
                        masked = int(v)
                ev = Event(self.enrich(env, ct, provider, now), ct, catalogue, data)
                if masked:
                    ev.extensions["redacted"] = masked
                if env.time is None:
                    ev.warn("no event time: the received time stands in")
                accepted.append((rec, ev, data))
            except InvalidEvent as e:
                out.dead.append(dlq_record(rec, e, self.dlq))
            except Exception as e:
                out.dead.append(self._internal(rec, e))
        if self.processors:
            run_processors(self.processors, [ev for _, ev, _ in accepted])
        for rec, ev, data in accepted:
            if ev.dropped:
                out.dropped += 1
                continue
            try:
                if ev.dead is not None:
                    raise InvalidEvent(ev.dead)
                settled = ev.settle()
                env, data = settled if settled is not None else (ev.envelope, data)
                value = encode_typed(env, ev.context_type, data, catalogue)
            except InvalidEvent as e:
                out.dead.append(dlq_record(rec, e, self.dlq))
                continue
            except msgspec.ValidationError as e:
                reason, ptr = pointer_of(e, "/data")
                out.dead.append(dlq_record(rec, InvalidEvent(f"after the processors: {reason}", ptr), self.dlq))
                continue
            except Exception as e:
                out.dead.append(self._internal(rec, e))
                continue
            ct = ev.context_type
            out.ok.append(OutRecord(self.topics[ct.name], env.key(), value, cache_headers(env, ev.extensions)))
        return out

    def _internal(self, rec: ConsumerRecord[bytes, bytes], e: Exception) -> OutRecord:
        log.exception("unexpected error routing %s[%d]@%d", rec.topic, rec.partition, rec.offset)
        return dlq_record(rec, InvalidEvent(f"internal error: {type(e).__name__}: {e}"), self.dlq)


class RouteStage(TransactionalStage):
    """``ctx.ingest`` -> decode, validate, enrich, processors -> typed topics, or ``ctx.dlq``; one
    transaction per batch (see ``TransactionalStage``)."""

    stage = "route"

    async def on_start(self) -> None:
        s = self.settings
        await ensure_topics(s, all_topics(s, self.catalogue))
        self.routing = Routing(s, self.catalogue)
        await self.open_transactions(f"{s.kafka.group_prefix}.route")
        self.consumer = self.subscribe([ingest_topic(s)], self.group)

    async def handle(self, batch: dict[Any, list[Any]]) -> None:
        records = [r for recs in batch.values() for r in recs]
        result = self.routing.route(records)
        await self.produce(result.ok + result.dead, {tp: recs[-1].offset + 1 for tp, recs in batch.items()})
        EVENTS.labels("route", "ok").inc(len(result.ok))
        if result.dead:
            EVENTS.labels("route", "dlq").inc(len(result.dead))
        if result.dropped:
            EVENTS.labels("route", "dropped").inc(result.dropped)

"""The CEP stage: typed topics -> matcher -> ``ctx.composites`` (and ``ctx.late``).

Composites are events like any other: type ``composite.<pattern>``, context type
``Composite``, subject ``<pattern>/<key>``, written to the typed topic in the canonical
form, so the materializer caches and pushes them and the sink stores them. Matcher
state is in memory for now: a restarted worker starts its partial matches afresh.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from fabric.cep.matcher import Composite, Late, Matcher, Output, Position
from fabric.cep.patterns import Pattern, compile_pattern, load_patterns
from fabric.cep.predicates import PatternError
from fabric.errors import InvalidEvent
from fabric.pipeline.enrich import new_traceparent
from fabric.pipeline.route import CACHE_JSON, OutRecord, cache_headers
from fabric.pipeline.stages import EVENTS, Stage, consumer, producer, send_all
from fabric.settings import Settings
from fabric.topics.admin import all_topics, ensure_topics, typed_topics
from fabric.topics.codecs import decode_structured, decode_typed, encode_typed, validate
from fabric.topics.registry import Registry

log = logging.getLogger(__name__)


def load_pattern_file(path: Path | None) -> list[Pattern]:
    if path is None or str(path) in ("", ".") or not path.is_file():
        return []
    return load_patterns(path.read_text())


def _ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def composite_event(c: Composite, registry: Registry) -> tuple[Any, Any, Any]:
    """The composite as an envelope, validated against the Composite schema."""
    tenant, _, key = c.key.partition("|")
    aggregates = {
        k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in c.aggregates.items()
    }
    body = {
        "id": f"{c.pattern}.v{c.version}.{c.key}.{c.first_ms}.{c.last_ms}", "source": "fabric://cep",
        "type": f"composite.{c.pattern}", "subject": f"{c.pattern}/{key}", "tenant": tenant,
        "time": _ms(c.last_ms), "sequence": c.last_ms, "traceparent": new_traceparent(),
        "data": {"pattern": c.pattern, "version": c.version, "key": key, "first_time": _ms(c.first_ms),
                 "last_time": _ms(c.last_ms), "confidence": c.confidence, "aggregates": aggregates,
                 "events": [{"id": e["id"], "time": _ms(e["time_ms"]), "topic": e["topic"],
                             "partition": e["partition"], "offset": e["offset"]} for e in c.events]},
    }  # fmt: skip
    env = decode_structured(orjson.dumps(body))
    ct, data = validate(env, registry)
    now = datetime.now(UTC)
    env = msgspec.structs.replace(env, contexttype=ct.name, provider="cep", receivedtime=now)
    return env, ct, data


class CepStage(Stage):
    stage = "cep"

    def __init__(self, settings: Settings, registry: Registry, patterns: list[Pattern], **kw: Any) -> None:
        super().__init__(settings, registry, **kw)
        self.matcher = Matcher(patterns)
        self.bundled = {p.name: p.source for p in patterns}
        self.overrides: dict[str, dict[str, Any] | None] = {}
        self.patterns_consumer: AIOKafkaConsumer | None = None

    async def on_start(self) -> None:
        s = self.settings
        await ensure_topics(s, [*all_topics(s, self.registry), s.topic("late"), s.topic("patterns")])
        self.patterns_consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
        )  # fmt: skip
        await self.patterns_consumer.start()
        parts = self.patterns_consumer.partitions_for_topic(s.topic("patterns")) or {0}
        self.patterns_consumer.assign([TopicPartition(s.topic("patterns"), p) for p in sorted(parts)])
        self.composites_topic = s.topic(self.registry["Composite"].topic)
        self._producer = self.producer = producer(s)
        await self.producer.start()
        sources = [t for t in typed_topics(s, self.registry) if t != self.composites_topic]
        self.consumer = consumer(s, sources, f"{s.kafka.group_prefix}.cep")

    async def on_started(self) -> None:
        await super().on_started()
        self.add_future(self._follow_patterns())

    async def _follow_patterns(self) -> None:
        """Apply pattern changes from the compacted ``ctx.patterns`` topic as they come:
        key = pattern name, value = its JSON spec, no value = removed."""
        assert self.patterns_consumer is not None
        while not self.should_stop:
            try:
                batch = await self.patterns_consumer.getmany(timeout_ms=500)
            except KafkaError as e:
                log.warning("cep: reading patterns: %s", e)
                await asyncio.sleep(1)
                continue
            changed = False
            for recs in batch.values():
                for r in recs:
                    name = (r.key or b"").decode()
                    self.overrides[name] = orjson.loads(r.value) if r.value else None
                    changed = True
            if changed:
                self.reload()

    def reload(self) -> None:
        specs: dict[str, Any] = dict(self.bundled)
        for name, spec in self.overrides.items():
            if spec is None:
                specs.pop(name, None)
            else:
                specs[name] = spec
        patterns = []
        for name, spec in specs.items():
            try:
                patterns.append(compile_pattern(spec))
            except PatternError as e:
                log.error("cep: pattern %s not applied: %s", name, e)
        self.matcher.replace(patterns)
        log.warning("cep: patterns now %s", ", ".join(f"{p.name} v{p.version}" for p in patterns) or "none")

    async def on_stop(self) -> None:
        if self.patterns_consumer is not None:
            await self.patterns_consumer.stop()
        if self.consumer:
            await self.consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    def _event(self, rec: Any) -> dict[str, Any] | None:
        for k, v in rec.headers or ():
            if k == CACHE_JSON:
                out: dict[str, Any] = orjson.loads(v)
                return out
        try:
            _, ev = decode_typed(rec.value, self.registry)
            return ev
        except InvalidEvent:
            return None  # the materializer dead-letters it

    async def handle(self, batch: dict[Any, list[Any]]) -> None:
        outputs: list[Output] = []
        for tp, recs in batch.items():
            for r in recs:
                event = self._event(r)
                if event is not None:
                    outputs += self.matcher.process(event, Position(tp.topic, tp.partition, r.offset))
        if not outputs:
            return
        records = []
        for o in outputs:
            if isinstance(o, Late):
                records.append(OutRecord(self.settings.topic("late"), None, orjson.dumps({
                    "pattern": o.pattern, "event_id": o.event_id, "late_by_ms": o.late_by_ms,
                    "topic": o.position.topic if o.position else None,
                    "partition": o.position.partition if o.position else None,
                    "offset": o.position.offset if o.position else None})))  # fmt: skip
                continue
            env, ct, data = composite_event(o, self.registry)
            records.append(
                OutRecord(
                    self.composites_topic, env.key(), encode_typed(env, ct, data, self.registry), cache_headers(env)
                )
            )
        await send_all(self.producer, records)
        EVENTS.labels("cep", "composite").inc(sum(1 for o in outputs if isinstance(o, Composite)))
        EVENTS.labels("cep", "late").inc(sum(1 for o in outputs if isinstance(o, Late)))

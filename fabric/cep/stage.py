"""The CEP stage: typed topics -> matcher -> ``ctx.composites`` (and ``ctx.late``).

Composites are events like any other: type ``composite.<pattern>``, context type
``Composite``, subject ``<pattern>/<key>``, written to the typed topic in the canonical
form, so the materializer caches and pushes them and the sink stores them.

Matcher state survives a restart: every few seconds the stage writes a checkpoint — the
matcher's state and the offsets it covers — to the compacted ``ctx.cep-checkpoints``
topic, and a starting stage restores it and replays from those offsets. A composite
fired again by the replay has the same id and sequence, so the cache and ClickHouse
keep it once.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from fabric import kafka_clients
from fabric.cep.matcher import Composite, Late, Matcher, Output, Position
from fabric.cep.patterns import Pattern, compile_pattern, load_patterns, scoped
from fabric.cep.predicates import PatternError
from fabric.errors import InvalidEvent
from fabric.pipeline.enrich import new_traceparent
from fabric.pipeline.route import CACHE_JSON, OutRecord, cache_headers
from fabric.pipeline.stages import EVENTS, Stage, send_all
from fabric.registry.store import PATTERN, split_owner
from fabric.settings import Settings
from fabric.topics.admin import all_topics, ensure_topics, partitions_of, read_compacted, typed_topics
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


class _FromCheckpoint(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partitions resume where the checkpoint's state ends, not where the group committed."""

    def __init__(self, stage: CepStage) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:
            self.stage.positions.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        assert self.stage.consumer is not None
        for tp in assigned:
            off = self.stage.checkpoint_offsets.get(f"{tp.topic}:{tp.partition}")
            if off is not None:
                self.stage.consumer.seek(tp, off)


class CepStage(Stage):
    stage = "cep"

    def __init__(self, settings: Settings, registry: Registry, patterns: list[Pattern], **kw: Any) -> None:
        super().__init__(settings, registry, **kw)
        self.matcher = Matcher(patterns)
        self.bundled = {p.name: p.source for p in patterns}
        self.overrides: dict[str, dict[str, Any] | None] = {}
        self.patterns_consumer: AIOKafkaConsumer | None = None
        self.positions: dict[TopicPartition, int] = {}
        self.checkpoint_offsets: dict[str, int] = {}
        self.checkpoint_processed: dict[str, int] = {}
        self._last_checkpoint = 0.0

    async def on_start(self) -> None:
        s = self.settings
        await ensure_topics(
            s, [*all_topics(s, self.registry), s.topic("late"), s.topic("registry"), s.topic("cep-checkpoints")]
        )
        self.checkpoint_key = f"{s.kafka.group_prefix}.cep".encode()
        self.patterns_consumer = kafka_clients.consumer(s)
        await kafka_clients.start(s, self.patterns_consumer)
        self.patterns_consumer.assign(await partitions_of(self.patterns_consumer, s.topic("registry")))
        # patterns applied so far (``pattern:<name>`` records of the registry), then the
        # state checkpointed for them
        for key, spec in (await read_compacted(s, s.topic("registry"))).items():
            if key.startswith(PATTERN):
                self.overrides[key.removeprefix(PATTERN)] = orjson.loads(spec) if spec else None
        if self.overrides:
            self.reload()
        saved = (await read_compacted(s, s.topic("cep-checkpoints"))).get(self.checkpoint_key.decode())
        if saved:
            snap = orjson.loads(saved)
            self.checkpoint_offsets = snap["offsets"]
            self.checkpoint_processed = snap["processed"]
            processed = {
                (k.rsplit(":", 1)[0], int(k.rsplit(":", 1)[1])): v for k, v in self.checkpoint_processed.items()
            }
            restored = self.matcher.restore(snap["matcher"], processed)
            log.warning("cep: restored %s from the checkpoint", ", ".join(restored) or "no pattern")
        self.composites_topic = s.topic(self.registry["Composite"].topic)
        self._producer = self.producer = kafka_clients.producer(s)
        await kafka_clients.start(s, self.producer)
        sources = [t for t in typed_topics(s, self.registry) if t != self.composites_topic]
        self.consumer = kafka_clients.consumer(s, group=f"{s.kafka.group_prefix}.cep")
        self.consumer.subscribe(sources, listener=_FromCheckpoint(self))
        self.checkpoints = kafka_clients.producer(s, compression_type="gzip", max_request_size=16 << 20)
        await kafka_clients.start(s, self.checkpoints)

    async def on_started(self) -> None:
        await super().on_started()
        self.add_future(self._follow_patterns())

    async def _follow_patterns(self) -> None:
        """Apply pattern changes from the registry topic as they come: key
        ``pattern:<name>``, value = its JSON spec, no value = removed."""
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
                    key = (r.key or b"").decode()
                    if key.startswith(PATTERN):
                        self.overrides[key.removeprefix(PATTERN)] = orjson.loads(r.value) if r.value else None
                        changed = True
            if changed:
                self.reload()

    def reload(self) -> None:
        """Compile what runs now: the platform's patterns (bundled, then ``pattern:<name>``
        records) for every tenant, and each tenant's own (``pattern:<tenant>/<name>``) for
        that tenant alone, shadowing the platform's pattern of the same name for it."""
        specs: dict[tuple[str | None, str], Any] = {(None, n): s for n, s in self.bundled.items()}
        for full, spec in self.overrides.items():
            specs[split_owner(full)] = spec  # None: a tombstone removes it
        shadowed: dict[str, set[str]] = {}
        for owner, name in specs:
            if owner is not None and specs[owner, name] is not None:
                shadowed.setdefault(name, set()).add(owner)
        patterns = []
        for (owner, name), spec in specs.items():
            if spec is None:
                continue
            try:
                compiled = compile_pattern(spec)
                if compiled.name != name:
                    raise PatternError(name, "name", f"the record names {name!r} but the pattern {compiled.name!r}")
                patterns.append(
                    scoped(compiled, owner, frozenset(shadowed.get(name, ())) if owner is None else frozenset())
                )
            except PatternError as e:
                log.error("cep: pattern %s not applied: %s", f"{owner}/{name}" if owner else name, e)
        self.matcher.replace(patterns)
        log.warning("cep: patterns now %s", ", ".join(f"{p.run_id} v{p.version}" for p in patterns) or "none")

    async def checkpoint(self) -> None:
        """The matcher's state, the offsets it has read (``processed``) and those a restart
        reads again from (``offsets``: events still waiting for the watermark are not in
        the state), in one record."""
        processed = dict(self.checkpoint_processed)
        processed.update({f"{tp.topic}:{tp.partition}": off for tp, off in self.positions.items()})
        self.checkpoint_processed = processed
        offsets = dict(processed)
        for (topic, partition), oldest in self.matcher.replay_from().items():
            name = f"{topic}:{partition}"
            offsets[name] = min(offsets.get(name, oldest), oldest)
        self.checkpoint_offsets = offsets
        snap = {"offsets": offsets, "processed": processed, "matcher": self.matcher.snapshot()}
        value = orjson.dumps(snap, default=str)
        await self.checkpoints.send_and_wait(self.settings.topic("cep-checkpoints"), value, key=self.checkpoint_key)
        self._last_checkpoint = asyncio.get_running_loop().time()

    async def on_stop(self) -> None:
        if self.positions:
            try:
                await self.checkpoint()
            except KafkaError as e:
                log.warning("cep: last checkpoint not written: %s", e)
        await self.checkpoints.stop()
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
            self.positions[tp] = recs[-1].offset + 1
            EVENTS.labels("cep", "seen").inc(len(recs))
        if outputs:
            await self._emit(outputs)
        if asyncio.get_running_loop().time() - self._last_checkpoint >= self.settings.worker.checkpoint_every_s:
            await self.checkpoint()

    async def _emit(self, outputs: list[Output]) -> None:
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

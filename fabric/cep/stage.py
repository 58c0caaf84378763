"""CEP across worker processes: typed topics -> re-keyed -> matchers -> ``ctx.composites``.

Two stages, as Kafka Streams does it:

- **keying** (``KeyStage``) reads the typed topics and writes each event to the
  repartition topic ``ctx.cep-keyed``, once per partition that a pattern's correlation
  key (``tenant|data.service``...) sends it to, naming the patterns it is for. After each
  batch it writes a *tick* to every keyed partition: "source partition P has reached
  time T", so every matcher's watermark moves even when its keys are quiet.
- **matching** (``CepStage``) reads ``ctx.cep-keyed``. Each assigned partition has its own
  ``Matcher``; all events of one key meet in one partition, whichever ingest partition
  and worker they came through. Composites are events like any other: type
  ``composite.<pattern>``, context type ``Composite``, subject ``<pattern>/<key>``, in the
  canonical form, so the materializer caches and pushes them and the sink stores them.

Both stages are transactional (``TransactionalStage``): output and input offsets commit
together. The matcher's state is checkpointed per partition to the compacted
``ctx.cep-checkpoints`` (key ``<group>.cep.<partition>``) every
``worker.checkpoint_every_s`` inside the batch's transaction, and when the partition is
revoked (the hand-over). A new owner restores the checkpoint and reads again from the
oldest offset the state still needs; outputs of records below the group's committed
offset were committed before, so they are computed (to rebuild the state) but not sent
again. Every composite is written once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import Histogram

from fabric.cep.checkpoint import Checkpoint
from fabric.cep.clock import event_time_ms
from fabric.cep.matcher import Candidates, Composite, Late, Matcher, Output, relevance
from fabric.cep.patterns import Pattern, PatternError, compile_pattern, load_patterns, scoped
from fabric.cep.state import Position
from fabric.errors import InvalidEvent
from fabric.events.catalogue import Catalogue
from fabric.events.codecs import decode_structured, decode_typed, encode_typed, validate
from fabric.events.headers import CACHE_JSON
from fabric.events.times import iso_ms
from fabric.kafka.compacted import Follower, read_compacted
from fabric.kafka.send import OutRecord
from fabric.kafka.topics import all_topics, ensure_topics, typed_topics
from fabric.pipeline.enrich import new_traceparent
from fabric.pipeline.route import cache_headers
from fabric.pipeline.stage import EVENTS, TransactionalStage
from fabric.registry.store import PATTERN, split_owner
from fabric.retry import until_done
from fabric.settings import Settings

log = logging.getLogger(__name__)

#: headers of a keyed record: the patterns it is for, where it was first written, its time
RUNS, SOURCE, TIME = "fabric_cep_runs", "fabric_cep_source", "fabric_cep_time"
#: checkpoints may take this fraction of the time at most (1/20): a slow one spaces the next
CHECKPOINT_SHARE = 20
CHECKPOINT_SECONDS = Histogram("fabric_cep_checkpoint_seconds", "Time to snapshot the CEP state (on the event loop)")


def load_pattern_file(path: Path | None) -> list[Pattern]:
    if path is None or str(path) in ("", ".") or not path.is_file():
        return []
    return load_patterns(path.read_text())


def composite_event(c: Composite, catalogue: Catalogue) -> tuple[Any, Any, Any]:
    """The composite as an envelope, validated against the Composite schema."""
    tenant, _, key = c.key.partition("|")
    aggregates = {
        k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in c.aggregates.items()
    }
    body = {
        "id": f"{c.pattern}.v{c.version}.{c.key}.{c.first_ms}.{c.last_ms}", "source": "fabric://cep",
        "type": f"composite.{c.pattern}", "subject": f"{c.pattern}/{key}", "tenant": tenant,
        "time": iso_ms(c.last_ms), "sequence": c.last_ms, "traceparent": new_traceparent(),
        "data": {"pattern": c.pattern, "version": c.version, "key": key, "first_time": iso_ms(c.first_ms),
                 "last_time": iso_ms(c.last_ms), "confidence": c.confidence, "aggregates": aggregates,
                 "events": [{"id": e["id"], "time": iso_ms(e["time_ms"]), "topic": e["topic"],
                             "partition": e["partition"], "offset": e["offset"]} for e in c.events]},
    }  # fmt: skip
    env = decode_structured(orjson.dumps(body))
    ct, data = validate(env, catalogue)
    now = datetime.now(UTC)
    env = msgspec.structs.replace(env, contexttype=ct.name, provider="cep", receivedtime=now)
    return env, ct, data


class PatternSource:
    """The patterns that run: the bundled ones, then the registry's ``pattern:<name>``
    records (value = JSON spec, no value = removed), followed live."""

    def __init__(self, settings: Settings, bundled: list[Pattern], on_change: Callable[[list[Pattern]], None]) -> None:
        self.settings = settings
        self.bundled = {p.name: p.source for p in bundled}
        self.overrides: dict[str, dict[str, Any] | None] = {}
        self.on_change = on_change
        self.follower = Follower(settings, settings.topic("registry"), self._record, prefix=PATTERN,
                                 after_batch=self._changed)  # fmt: skip
        self._dirty = False

    def _record(self, name: str, spec: bytes | None) -> None:
        value = orjson.loads(spec) if spec else None
        if name not in self.overrides or self.overrides[name] != value:
            self.overrides[name] = value
            self._dirty = True

    def _changed(self) -> None:
        if self._dirty:
            self._dirty = False
            self.on_change(self.compiled())

    async def start(self) -> list[Pattern]:
        """Read what was applied so far; returns the patterns that run now."""
        await self.follower.start()
        self._dirty = False
        return self.compiled()

    async def stop(self) -> None:
        await self.follower.stop()

    async def follow(self, stopped: Callable[[], bool]) -> None:
        """Apply pattern changes from the registry topic as they come."""
        await self.follower.run(stopped)

    async def catch_up(self) -> None:
        """Read the registry topic to its end now (a keyed record names a pattern this
        process has not loaded yet: the key stage's follower was faster than ours)."""
        records = await read_compacted(self.settings, self.settings.topic("registry"))
        for key, spec in records.items():
            if key.startswith(PATTERN):
                self._record(key.removeprefix(PATTERN), spec)
        self._changed()

    def compiled(self) -> list[Pattern]:
        """The platform's patterns (bundled, then ``pattern:<name>`` records) for every
        tenant, and each tenant's own (``pattern:<tenant>/<name>``) for that tenant alone,
        shadowing the platform's pattern of the same name for it."""
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
        return patterns


def event_of(rec: Any, catalogue: Catalogue) -> tuple[bytes, dict[str, Any]] | None:
    """A typed-topic record's event as canonical JSON and as a dict; None when it does not
    decode (the materializer dead-letters it)."""
    for k, v in rec.headers or ():
        if k == CACHE_JSON:
            return v, orjson.loads(v)
    try:
        _, ev = decode_typed(rec.value, catalogue)
    except InvalidEvent:
        return None
    raw = orjson.dumps({k: v for k, v in ev.items() if v is not None}, default=str)  # as the route stage writes it
    return raw, orjson.loads(raw)


class KeyStage(TransactionalStage):
    """Typed topics -> ``ctx.cep-keyed``, by each pattern's correlation key (see the module)."""

    stage = "cep-keys"

    def __init__(self, settings: Settings, catalogue: Catalogue, patterns: list[Pattern], **kw: Any) -> None:
        super().__init__(settings, catalogue, **kw)
        self.source = PatternSource(settings, patterns, self._use)
        self._use(patterns)

    def _use(self, patterns: list[Pattern]) -> None:
        self.keyers = Candidates((p, (p.run_id, relevance(p), p.key)) for p in patterns)

    async def on_start(self) -> None:
        s = self.settings
        self.keyed = s.topic("cep-keyed")
        await ensure_topics(s, [*all_topics(s, self.catalogue), self.keyed, s.topic("registry")])
        self._use(await self.source.start())
        await self.open_transactions(f"{s.kafka.group_prefix}.cep-keys")
        composites = s.topic(self.catalogue["Composite"].topic)
        sources = [t for t in typed_topics(s, self.catalogue) if t != composites]
        self.consumer = self.subscribe(sources, self.group)
        self.partitions: list[int] = []

    async def on_started(self) -> None:
        await super().on_started()
        self.add_future(self.source.follow(lambda: self.should_stop))

    async def on_stop(self) -> None:
        await self.source.stop()
        await super().on_stop()

    async def handle(self, batch: dict[Any, list[Any]]) -> None:
        if not self.partitions:
            self.partitions = sorted(await self.producer.partitions_for(self.keyed))
        parts = self.partitions
        place = DefaultPartitioner()
        out: list[OutRecord] = []
        sent = 0
        for tp, recs in batch.items():
            newest: int | None = None
            for r in recs:
                got = event_of(r, self.catalogue)
                if got is None:
                    continue
                raw, event = got
                try:
                    t = event_time_ms(event)
                except ValueError:
                    continue
                newest = t if newest is None else max(newest, t)
                targets: dict[int, list[str]] = {}
                for run_id, relevant, key in self.keyers(event):
                    if relevant(event):
                        k = key(event)
                        if k is not None:
                            targets.setdefault(place(k.encode(), parts, parts), []).append(run_id)
                where = f"{tp.topic}:{tp.partition}:{r.offset}".encode()
                for p, runs in targets.items():
                    headers = [(RUNS, ",".join(runs).encode()), (SOURCE, where), (TIME, str(t).encode())]
                    out.append(OutRecord(self.keyed, None, raw, headers, partition=p))
                    sent += 1
            if newest is not None:  # the tick: this source partition has reached ``newest``
                where = f"{tp.topic}:{tp.partition}:{recs[-1].offset}".encode()
                out += [
                    OutRecord(self.keyed, None, b"", [(SOURCE, where), (TIME, str(newest).encode())], partition=p)
                    for p in parts
                ]
        await self.produce(out, {tp: recs[-1].offset + 1 for tp, recs in batch.items()})
        EVENTS.labels("cep-keys", "seen").inc(sum(len(recs) for recs in batch.values()))
        EVENTS.labels("cep-keys", "keyed").inc(sent)
        EVENTS.labels("cep-keys", "ticks").inc(len(out) - sent)


class _Part:
    """One keyed partition: its matcher, where it is, and what was already sent."""

    def __init__(self, matcher: Matcher, silent_until: int) -> None:
        self.matcher = matcher
        self.silent_until = silent_until  # outputs of records below it were committed before
        self.next = 0
        self.saved = 0  # ``next`` when the last checkpoint was written


class CepStage(TransactionalStage):
    """``ctx.cep-keyed`` -> a matcher per partition -> composites (see the module)."""

    stage = "cep"

    def __init__(self, settings: Settings, catalogue: Catalogue, patterns: list[Pattern], **kw: Any) -> None:
        super().__init__(settings, catalogue, **kw)
        self.patterns = patterns
        self.source = PatternSource(settings, patterns, self._use)
        self.parts: dict[TopicPartition, _Part] = {}
        self._last_checkpoint = 0.0
        self._checkpoint_wait = settings.worker.checkpoint_every_s
        self._looked_up: set[str] = set()  # pattern ids caught up on and still unknown

    def _use(self, patterns: list[Pattern]) -> None:
        self.patterns = patterns
        self._looked_up.clear()
        for part in self.parts.values():
            part.matcher.replace(patterns)
        log.warning("cep: patterns now %s", ", ".join(f"{p.run_id} v{p.version}" for p in patterns) or "none")

    async def on_start(self) -> None:
        s = self.settings
        self.keyed = s.topic("cep-keyed")
        await ensure_topics(
            s, [*all_topics(s, self.catalogue), self.keyed, s.topic("late"), s.topic("registry"),
                s.topic("cep-checkpoints")],
        )  # fmt: skip
        self.patterns = await self.source.start()
        self.composites_topic = s.topic(self.catalogue["Composite"].topic)
        await self.open_transactions(f"{s.kafka.group_prefix}.cep")
        self.consumer = self.subscribe([self.keyed], self.group)

    async def on_started(self) -> None:
        await super().on_started()
        self.add_future(self.source.follow(lambda: self.should_stop))

    async def on_stop(self) -> None:
        async with self.batch_lock:
            if self.parts:
                try:
                    await self.produce(self._checkpoints(list(self.parts)), self._offsets(list(self.parts)),
                                       finish=True)  # fmt: skip
                except KafkaError as e:
                    log.warning("cep: last checkpoint not written: %s", e)
        await self.source.stop()
        await super().on_stop()

    def checkpoint_key(self, tp: TopicPartition) -> str:
        return f"{self.group}.{tp.partition}"

    async def assigned(self, tps: list[TopicPartition]) -> None:
        await self.take_over(tps)

    async def revoked(self, tps: list[TopicPartition]) -> None:
        await self.hand_over([tp for tp in tps if tp in self.parts])

    async def take_over(self, assigned: list[TopicPartition]) -> None:
        """Restore each partition's checkpoint and read again from what its state needs."""
        assert self.consumer is not None
        if not assigned:
            return
        saved = await read_compacted(self.settings, self.settings.topic("cep-checkpoints"))
        for tp in assigned:
            committed = await self.consumer.committed(tp) or 0
            matcher = Matcher(self.patterns)
            snap = saved.get(self.checkpoint_key(tp))
            if snap:
                cp = Checkpoint.decode(snap)
                restored = matcher.restore(cp.matcher, {(tp.topic, tp.partition): cp.processed})
                self.consumer.seek(tp, cp.offset)
                log.warning("cep: partition %d: restored %s, reading again from %d (sent up to %d)",
                            tp.partition, ", ".join(restored) or "no pattern", cp.offset, committed)  # fmt: skip
            else:
                await self.consumer.seek_to_beginning(tp)  # no state saved: rebuild it from the start
            self.parts[tp] = _Part(matcher, committed)

    async def _rewind(self) -> None:
        """A batch failed after its events reached the matchers: rebuild every partition's
        state from its checkpoint (the offsets alone would apply those events twice)."""
        async for attempt in until_done("cep: restore the state", KafkaError, stop=lambda: self.should_stop):
            with attempt:
                assert self.consumer is not None
                async with self.batch_lock:
                    self.epoch += 1  # a batch fetched meanwhile is from before the restore
                    self.parts.clear()
                    await self.take_over(list(self.consumer.assignment()))

    async def hand_over(self, revoked: list[TopicPartition]) -> None:
        """Checkpoint the revoked partitions and commit their offsets, so the next owner
        starts from this state."""
        try:
            if revoked:
                await self.produce(self._checkpoints(revoked), self._offsets(revoked), finish=True)
            else:
                await self.finish_transaction()
        except KafkaError as e:
            log.warning("cep: hand-over checkpoint not written (%s); the next owner replays more", e)
        for tp in revoked:
            self.parts.pop(tp, None)

    def _offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.parts[tp].next for tp in tps if self.parts[tp].next > 0}

    def _checkpoints(self, tps: Iterable[TopicPartition]) -> list[OutRecord]:
        """Per partition: the matcher's state, the next offset (``processed``) and the one a
        restore reads again from (``offset``: events still waiting for the watermark are not
        in the state)."""
        started = asyncio.get_running_loop().time()
        out = []
        for tp in tps:
            part = self.parts[tp]
            if part.next == 0:
                continue
            part.saved = part.next
            oldest = part.matcher.replay_from().get((tp.topic, tp.partition), part.next)
            cp = Checkpoint(min(oldest, part.next), part.next, part.matcher.snapshot())
            out.append(OutRecord(self.settings.topic("cep-checkpoints"), self.checkpoint_key(tp).encode(), cp.encode()))
        # A snapshot runs on the event loop the other stages share: with a large state the
        # next one waits long enough that snapshots take at most 1/CHECKPOINT_SHARE of the time.
        now = asyncio.get_running_loop().time()
        self._last_checkpoint = now
        took = now - started
        self._checkpoint_wait = max(self.settings.worker.checkpoint_every_s, took * CHECKPOINT_SHARE)
        CHECKPOINT_SECONDS.observe(took)
        return out

    def _checkpoint_due(self) -> bool:
        return asyncio.get_running_loop().time() - self._last_checkpoint >= self._checkpoint_wait

    async def tick(self) -> None:
        """Between batches: source partitions that went quiet stop holding the watermark
        back (what waited for them is matched now, not at the next record), and a
        checkpoint is due even without traffic when a partition moved since the last."""
        await super().tick()
        async with self.batch_lock:
            outputs: list[Output] = []
            for part in self.parts.values():
                out = part.matcher.quiet()
                if out and part.next >= part.silent_until:
                    outputs += out
            records = self._records(outputs)
            changed = [tp for tp, p in self.parts.items() if p.next != p.saved]
            if changed and self._checkpoint_due():
                records += self._checkpoints(changed)
            if records:
                await self.produce(records, self._offsets(changed))

    async def handle(self, batch: dict[Any, list[Any]]) -> None:
        await self._know_patterns(batch)
        outputs: list[Output] = []
        for tp, recs in batch.items():
            part = self.parts.get(tp)
            if part is None:
                continue  # revoked meanwhile
            m = part.matcher
            for r in recs:
                h = dict(r.headers or ())
                try:
                    topic, partition, offset = h[SOURCE].decode().rsplit(":", 2)
                    source = Position(topic, int(partition), int(offset))
                    t = int(h[TIME])
                except (KeyError, ValueError):
                    log.error("cep: %s:%d@%d is not a keyed record; skipped", tp.topic, tp.partition, r.offset)
                    continue
                if RUNS in h:
                    out = m.process(orjson.loads(r.value), Position(tp.topic, tp.partition, r.offset), t,
                                    source=source, runs=h[RUNS].decode().split(","))  # fmt: skip
                else:
                    out = m.tick(source, t)
                if out and r.offset >= part.silent_until:
                    outputs += out
            part.next = recs[-1].offset + 1
            EVENTS.labels("cep", "seen").inc(len(recs))
        records = self._records(outputs)
        if self._checkpoint_due():  # the partitions that moved since their last checkpoint
            records += self._checkpoints([tp for tp, p in self.parts.items() if p.next != p.saved])
        offsets = {tp: self.parts[tp].next for tp in batch if tp in self.parts}
        await self.produce(records, offsets)

    async def _know_patterns(self, batch: dict[Any, list[Any]]) -> None:
        """Every pattern a keyed record names is loaded before the record is matched: the
        key stage may have heard of a new pattern before this stage did."""
        known = {p.run_id for p in self.patterns}
        named = {run for recs in batch.values() for r in recs for k, v in (r.headers or ()) if k == RUNS
                 for run in v.decode().split(",")}  # fmt: skip
        missing = named - known - self._looked_up
        if missing:
            await self.source.catch_up()
            self._looked_up |= missing - {p.run_id for p in self.patterns}

    def _records(self, outputs: list[Output]) -> list[OutRecord]:
        records = []
        for o in outputs:
            if isinstance(o, Late):
                records.append(OutRecord(self.settings.topic("late"), None, orjson.dumps({
                    "pattern": o.pattern, "event_id": o.event_id, "late_by_ms": o.late_by_ms,
                    "topic": o.position.topic if o.position else None,
                    "partition": o.position.partition if o.position else None,
                    "offset": o.position.offset if o.position else None})))  # fmt: skip
                continue
            env, ct, data = composite_event(o, self.catalogue)
            records.append(
                OutRecord(
                    self.composites_topic, env.key(), encode_typed(env, ct, data, self.catalogue), cache_headers(env)
                )
            )
        EVENTS.labels("cep", "composite").inc(sum(1 for o in outputs if isinstance(o, Composite)))
        EVENTS.labels("cep", "late").inc(sum(1 for o in outputs if isinstance(o, Late)))
        return records

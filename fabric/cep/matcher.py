"""The matcher: runs compiled patterns over events in event time and emits composites.

Each pattern keeps its own watermark: the smallest, over the partitions it has seen,
of the newest event time, minus the pattern's allowed lateness. Events wait in a
buffer until the watermark passes them and are then applied in time order, so
out-of-order arrival within the lateness gives the same result as ordered arrival.
An event older than the watermark is late: it is reported (``Late``), never dropped
silently. Timers (an absence's deadline, a window's end, a session's gap) fire when
the watermark passes them. Patterns in processing-time mode use the clock instead.

State is plain dicts per pattern, bounded by ``max_keys`` (oldest keys evicted) and
purged as the watermark moves past it.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from fabric.cep.clock import Clock, SystemClock, event_time_ms
from fabric.cep.patterns import Absence, Aggregate, Pattern, Sequence
from fabric.conditions import Predicate

MAX_CONTRIBUTORS = 50
#: A partition that sent nothing for this long (processing time) stops holding the watermark back.
IDLE_MS = 10_000
#: event ids remembered per pattern, so an event delivered twice is applied once
APPLIED_IDS = 20_000
DUPLICATES = Counter("fabric_cep_duplicates_total", "Events a pattern had already applied (same id), skipped")


@dataclass(frozen=True, slots=True)
class Position:
    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class Ev:
    time_ms: int
    event: Mapping[str, Any]
    #: where the matcher read it (replay after a restore starts from these)
    position: Position | None
    #: where it was first written, when the matcher reads a re-keyed copy: names the
    #: event in composites, and its partition is the one that holds the watermark back
    source: Position | None = None

    def slim(self) -> Ev:
        """What state keeps of a matched event: enough to name it in a composite."""
        return Ev(self.time_ms, {"id": self.event.get("id")}, self.position, self.source)

    def ref(self) -> dict[str, Any]:
        p = self.source or self.position
        return {"id": self.event.get("id"), "time_ms": self.time_ms,
                "topic": p.topic if p else None, "partition": p.partition if p else None,
                "offset": p.offset if p else None}  # fmt: skip


@dataclass
class Composite:
    pattern: str
    version: int
    key: str
    events: list[dict[str, Any]]
    first_ms: int
    last_ms: int
    aggregates: dict[str, Any] = field(default_factory=dict)
    confidence: float = 1.0


@dataclass
class Late:
    pattern: str
    event_id: Any
    late_by_ms: int
    position: Position | None


Output = Composite | Late


def aggregate(fn: str, values: list[float]) -> float:
    return summarize(fn, sorted(values), float(sum(values)))


def summarize(fn: str, ordered: list[float], total: float) -> float:
    """count/sum/avg/min/max/p95 (nearest rank) of values given sorted, with their sum."""
    n = len(ordered)
    if fn == "count":
        return float(n)
    if not n:
        return math.nan
    if fn == "sum":
        return total
    if fn == "avg":
        return total / n
    if fn == "min":
        return float(ordered[0])
    if fn == "max":
        return float(ordered[-1])
    return float(ordered[max(0, math.ceil(0.95 * n) - 1)])


def _contributors(evs: Iterable[Ev]) -> list[dict[str, Any]]:
    out = [e.ref() for e in evs]
    return out if len(out) <= MAX_CONTRIBUTORS else out[: MAX_CONTRIBUTORS // 2] + out[-MAX_CONTRIBUTORS // 2 :]


def relevance(p: Pattern) -> Predicate:
    """Whether an event can take part in the pattern (some condition of it accepts it)."""
    rule = p.rule
    if isinstance(rule, Sequence):
        preds = [s.where for s in rule.steps]
        return lambda ev: any(w(ev) for w in preds)
    if isinstance(rule, Absence):
        first, then_not = rule.first, rule.then_not
        return lambda ev: first(ev) or then_not(ev)
    return rule.where


class _Window:
    """Values of a sliding window kept sorted, so p95/min/max need no sort per event."""

    __slots__ = ("armed", "events", "sorted", "total")

    def __init__(self) -> None:
        self.events: deque[tuple[int, float, Ev]] = deque()
        self.sorted: list[float] = []
        self.total = 0.0
        self.armed = False

    def add(self, t: int, v: float, ev: Ev) -> None:
        self.events.append((t, v, ev))
        bisect.insort(self.sorted, v)
        self.total += v

    def evict_until(self, t: int) -> None:
        while self.events and self.events[0][0] <= t:
            _, v, _ = self.events.popleft()
            del self.sorted[bisect.bisect_left(self.sorted, v)]
            self.total -= v

    def value(self, fn: str) -> float:
        return summarize(fn, self.sorted, self.total)


class _Bounded(OrderedDict[Any, Any]):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


@dataclass
class _Partial:
    step: int
    count: int
    events: list[Ev]
    first_ms: int
    matched: set[int]
    token: int = 0


class PatternRun:
    """One pattern's watermark, buffer and state."""

    def __init__(self, pattern: Pattern) -> None:
        self.p = pattern
        self.relevant = relevance(pattern)
        self.replay_until: dict[tuple[str, int], int] = {}
        self._base = -(2**62)  # the smallest newest-time over active partitions
        self._base_at = -(2**62)
        self.seen: dict[Any, tuple[int, int]] = {}  # partition -> (newest event time, when heard, clock ms)
        self.watermark = -(2**62)
        self.buffer: list[tuple[int, int, Ev]] = []
        self._seq = itertools.count()
        self.partials = _Bounded(pattern.max_keys)
        self.pending = _Bounded(pattern.max_keys)  # absence: key -> (deadline, first Ev, token)
        self.timers: list[tuple[int, int, Any]] = []  # (due, token, key)
        self.windows = _Bounded(pattern.max_keys)  # (key, start) -> [values, Evs]
        self.sessions = _Bounded(pattern.max_keys)  # key -> [start, last, values, Evs]
        self.sliding = _Bounded(pattern.max_keys)  # key -> [deque[(t, v, Ev)], armed]
        self.applied = _Bounded(APPLIED_IDS)  # ids of the latest events applied

    # ------------------------------------------------------------------ time

    def offer(self, ev: Ev, now_ms: int) -> list[Output]:
        """Every event moves time; only events some condition of the pattern accepts are kept."""
        relevant = self.relevant(ev.event)
        if self.p.time == "processing":
            out = self._apply(Ev(now_ms, ev.event, ev.position, ev.source)) if relevant else []
            return out + self._fire_until(now_ms)
        if ev.time_ms <= self.watermark and ev.position is not None:
            done = self.replay_until.get((ev.position.topic, ev.position.partition), -1)
            if ev.position.offset < done:
                return []  # replayed after a restore: applied (or reported late) before the checkpoint
        if ev.time_ms < self.watermark:
            if not relevant:
                return []
            return [Late(self.p.name, ev.event.get("id"), self.watermark - ev.time_ms, ev.source or ev.position)]
        if relevant:
            heapq.heappush(self.buffer, (ev.time_ms, next(self._seq), ev))
        at = ev.source or ev.position
        return self.observe((at.topic, at.partition) if at else None, ev.time_ms, now_ms)

    def observe(self, part: tuple[str, int] | None, time_ms: int, now_ms: int) -> list[Output]:
        """A partition has reached ``time_ms``: move the watermark if that moves it."""
        if self.p.time == "processing":
            return self._fire_until(now_ms)
        newest = self.seen.get(part)
        if newest is None or time_ms > newest[0]:
            self.seen[part] = (time_ms, now_ms)
            # The slowest partition holds the watermark back, unless it has gone quiet. The
            # minimum only moves when the slowest one advances, or (checked each second) when
            # one goes quiet; otherwise it is kept.
            if newest is None or newest[0] <= self._base or now_ms - self._base_at >= 1000:
                active = [t for t, heard in self.seen.values() if now_ms - heard <= IDLE_MS]
                self._base, self._base_at = min(active or [time_ms]), now_ms
            wm = self._base - self.p.lateness_ms
            if wm > self.watermark:
                return self.advance_to(wm)
        else:
            self.seen[part] = (newest[0], now_ms)
        return []

    def advance_to(self, watermark: int) -> list[Output]:
        """Move the watermark forward: apply buffered events up to it, then fire due timers."""
        if watermark <= self.watermark:
            return []
        self.watermark = watermark
        out: list[Output] = []
        while self.buffer and self.buffer[0][0] <= watermark:
            _, _, ev = heapq.heappop(self.buffer)
            out += self._fire_until(ev.time_ms - 1)  # timers due before this event fire first
            out += self._apply(ev)
        return out + self._fire_until(watermark)

    # ----------------------------------------------------------------- rules

    def _apply(self, ev: Ev) -> list[Output]:
        key = self.p.key(ev.event)
        if key is None:
            return []
        event_id = ev.event.get("id")
        if event_id is not None:
            # An event delivered twice (an edge producer's retry writes it again with the
            # same id) takes part once.
            if event_id in self.applied:
                DUPLICATES.inc()
                return []
            self.applied.put(event_id, None)
        rule = self.p.rule
        if isinstance(rule, Sequence):
            return self._sequence(rule, key, ev)
        if isinstance(rule, Absence):
            return self._absence(rule, key, ev)
        return self._aggregate(rule, key, ev)

    def _sequence(self, rule: Sequence, key: str, ev: Ev) -> list[Output]:
        steps = rule.steps
        part: _Partial | None = self.partials.get(key)
        if part is not None and ev.time_ms - part.first_ms > rule.within_ms:
            del self.partials[key]
            part = None
        if part is None:
            if not steps[0].where(ev.event):
                return []
            part = _Partial(0, 1, [ev.slim()], ev.time_ms, {0}, next(self._seq))
            self.partials.put(key, part)
            self._schedule(part.first_ms + rule.within_ms, ("expire", key, part.token))
        elif not self._advance(steps, part, ev):
            return []
        last = len(steps) - 1
        if part.step == last and part.count >= steps[last].min:
            del self.partials[key]
            return [Composite(self.p.name, self.p.version, key, _contributors(part.events), part.first_ms,
                              ev.time_ms, {"steps": len(part.matched)}, round(len(part.matched) / len(steps), 3))]  # fmt: skip
        return []

    @staticmethod
    def _advance(steps: Any, part: _Partial, ev: Ev) -> bool:
        cur = steps[part.step]
        if part.count < cur.max and cur.where(ev.event):
            part.count += 1
            part.events.append(ev.slim())
            return True
        if part.count < cur.min:
            return False
        j = part.step + 1
        while j < len(steps):
            if steps[j].where(ev.event):
                part.step, part.count = j, 1
                part.events.append(ev.slim())
                part.matched.add(j)
                return True
            if steps[j].min > 0:
                return False
            j += 1
        return False

    def _absence(self, rule: Absence, key: str, ev: Ev) -> list[Output]:
        waiting = self.pending.get(key)
        if waiting is not None and rule.then_not(ev.event) and waiting[1].time_ms <= ev.time_ms <= waiting[0]:
            del self.pending[key]
            waiting = None
        if waiting is None and rule.first(ev.event):
            token = next(self._seq)
            self.pending.put(key, (ev.time_ms + rule.within_ms, ev.slim(), token))
            # fires once the watermark is past the deadline: an event at the deadline still counts
            self._schedule(ev.time_ms + rule.within_ms + 1, ("absence", key, token))
        return []

    def _aggregate(self, rule: Aggregate, key: str, ev: Ev) -> list[Output]:
        if not rule.where(ev.event):
            return []
        value = rule.value(ev.event)
        if rule.fn != "count" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            return []
        w, t = rule.window, ev.time_ms
        if w.kind in ("tumbling", "hopping"):
            first = (t - w.size_ms) // w.slide_ms * w.slide_ms + w.slide_ms
            for start in range(first, t + 1, w.slide_ms):
                if start <= t < start + w.size_ms:
                    slot = self.windows.get((key, start))
                    if slot is None:
                        slot = [[], []]
                        self.windows.put((key, start), slot)
                        self._schedule(start + w.size_ms - 1, ("window", (key, start), 0))
                    slot[0].append(value)
                    slot[1].append(ev.slim())
            return []
        if w.kind == "session":
            out: list[Output] = []
            s = self.sessions.get(key)
            if s is not None and t - s[1] > w.gap_ms:
                out += self._close(rule, key, s[2], s[3], s[0], s[1] + w.gap_ms)
                s = None
            if s is None:
                s = [t, t, [], []]
                self.sessions.put(key, s)
            s[1] = max(s[1], t)
            s[2].append(value)
            s[3].append(ev.slim())
            self._schedule(s[1] + w.gap_ms, ("session", key, s[1]))
            return out
        # sliding: evaluated on every event over (t - size, t]; fires when the condition starts to hold
        win: _Window | None = self.sliding.get(key)
        if win is None:
            win = _Window()
            self.sliding.put(key, win)
        win.add(t, float(value) if rule.fn != "count" else 1.0, ev.slim())
        win.evict_until(t - w.size_ms)
        self._schedule(t + w.size_ms, ("slide", key, t))  # forget the key once its window is empty
        agg = win.value(rule.fn)
        holds = rule.when({"value": agg})
        fired = holds and not win.armed
        win.armed = holds
        if not fired:
            return []
        q = win.events
        return [Composite(self.p.name, self.p.version, key, _contributors(e for _, _, e in q), q[0][0], t,
                          {rule.fn: agg, "count": len(q), "window_ms": w.size_ms})]  # fmt: skip

    def _close(self, rule: Aggregate, key: str, values: list[Any], evs: list[Ev], start: int, end: int) -> list[Output]:
        agg = aggregate(rule.fn, values)
        if not rule.when({"value": agg}):
            return []
        return [Composite(self.p.name, self.p.version, key, _contributors(evs), evs[0].time_ms, evs[-1].time_ms,
                          {rule.fn: agg, "count": len(values), "window_start_ms": start, "window_end_ms": end})]  # fmt: skip

    # ---------------------------------------------------------------- timers

    def _schedule(self, due: int, what: tuple[str, Any, Any]) -> None:
        heapq.heappush(self.timers, (due, next(self._seq), what))

    def _fire_until(self, until: int) -> list[Output]:
        out: list[Output] = []
        while self.timers and self.timers[0][0] <= until:
            _, _, (kind, key, token) = heapq.heappop(self.timers)
            if kind == "expire":
                part = self.partials.get(key)
                if part is not None and part.token == token:
                    del self.partials[key]
            elif kind == "absence":
                waiting = self.pending.get(key)
                if waiting is not None and waiting[2] == token:
                    del self.pending[key]
                    first = waiting[1]
                    out.append(Composite(self.p.name, self.p.version, key, [first.ref()], first.time_ms, waiting[0],
                                         {"missing_for_ms": waiting[0] - first.time_ms}))  # fmt: skip
            elif kind == "window":
                slot = self.windows.pop(key, None)
                rule = self.p.rule
                if slot is not None and isinstance(rule, Aggregate):
                    out += self._close(rule, key[0], slot[0], slot[1], key[1], key[1] + rule.window.size_ms)
            elif kind == "slide":
                win = self.sliding.get(key)
                if win is not None and win.events and win.events[-1][0] == token:
                    del self.sliding[key]
            elif kind == "session":
                s = self.sessions.get(key)
                rule = self.p.rule
                if s is not None and s[1] == token and isinstance(rule, Aggregate):
                    del self.sessions[key]
                    out += self._close(rule, key, s[2], s[3], s[0], s[1] + rule.window.gap_ms)
        return out

    # ------------------------------------------------------------ checkpoint

    def snapshot(self) -> dict[str, Any]:
        """State as plain JSON-able data (see ``restore``), without the events still
        waiting for the watermark: a restart replays those from Kafka."""
        n = next(self._seq)
        return {
            "seq": n,
            "watermark": self.watermark,
            "seen": [[_part_out(k), t, heard] for k, (t, heard) in self.seen.items()],
            "timers": [[due, s, [kind, _key_out(key), token]] for due, s, (kind, key, token) in self.timers],
            "partials": [[k, p.step, p.count, [_ev_out(e) for e in p.events], p.first_ms, sorted(p.matched), p.token]
                         for k, p in self.partials.items()],
            "pending": [[k, d, _ev_out(e), tok] for k, (d, e, tok) in self.pending.items()],
            "windows": [[_key_out(k), v[0], [_ev_out(e) for e in v[1]]] for k, v in self.windows.items()],
            "sessions": [[k, s[0], s[1], s[2], [_ev_out(e) for e in s[3]]] for k, s in self.sessions.items()],
            "sliding": [[k, w.armed, [[t, v, _ev_out(e)] for t, v, e in w.events]] for k, w in self.sliding.items()],
        }  # fmt: skip

    def restore(self, snap: dict[str, Any], now_ms: int) -> None:
        self._seq = itertools.count(int(snap["seq"]))
        self.watermark = int(snap["watermark"])
        # every partition counts as just heard: one that was quiet before the restart must
        # not be skipped (and its events taken as late) because the restart took a while
        self.seen = {_part_in(k): (t, max(heard, now_ms)) for k, t, heard in snap["seen"]}
        self.timers = [(due, s, (kind, _key_in(key), tok)) for due, s, (kind, key, tok) in snap["timers"]]
        heapq.heapify(self.timers)
        for k, step, count, evs, first, matched, tok in snap["partials"]:
            self.partials.put(k, _Partial(step, count, [_ev_in(e) for e in evs], first, set(matched), tok))
        for k, d, e, tok in snap["pending"]:
            self.pending.put(k, (d, _ev_in(e), tok))
        for k, values, evs in snap["windows"]:
            self.windows.put(_key_in(k), [values, [_ev_in(e) for e in evs]])
        for k, start, last, values, evs in snap["sessions"]:
            self.sessions.put(k, [start, last, values, [_ev_in(e) for e in evs]])
        for k, armed, items in snap["sliding"]:
            w = _Window()
            for t, v, e in items:
                w.add(t, v, _ev_in(e))
            w.armed = armed
            self.sliding.put(k, w)

    def state_size(self) -> int:
        return len(self.partials) + len(self.pending) + len(self.windows) + len(self.sessions) + len(self.sliding)


def _pos_out(p: Position | None) -> list[Any] | None:
    return [p.topic, p.partition, p.offset] if p else None


def _ev_out(e: Ev) -> list[Any]:
    return [e.time_ms, dict(e.event), _pos_out(e.position), _pos_out(e.source)]


def _ev_in(raw: list[Any]) -> Ev:
    t, event, pos, *source = raw
    src = source[0] if source else None
    return Ev(t, event, Position(*pos) if pos else None, Position(*src) if src else None)


def _part_out(k: Any) -> list[Any] | None:
    return list(k) if k is not None else None


def _part_in(k: Any) -> Any:
    return tuple(k) if k is not None else None


def _key_out(k: Any) -> Any:
    return list(k) if isinstance(k, tuple) else k


def _key_in(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


class Matcher:
    """All active patterns. ``process`` one event, ``advance_to`` a watermark when idle."""

    def __init__(self, patterns: Iterable[Pattern] = (), clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self.runs: dict[str, PatternRun] = {p.run_id: PatternRun(p) for p in patterns}

    def process(
        self,
        event: Mapping[str, Any],
        position: Position | None = None,
        time_ms: int | None = None,
        *,
        source: Position | None = None,
        runs: Iterable[str] | None = None,
    ) -> list[Output]:
        """Offer one event to every pattern, or only to ``runs`` (the patterns a re-keyed
        copy was sent for; the others learn the time from ``tick``)."""
        t = event_time_ms(event) if time_ms is None else time_ms
        now = self.clock.now_ms()
        out: list[Output] = []
        ev = Ev(t, event, position, source)
        if runs is None:
            for run in self.runs.values():
                out += run.offer(ev, now)
        else:
            for run_id in runs:
                wanted = self.runs.get(run_id)
                if wanted is not None:
                    out += wanted.offer(ev, now)
        return out

    def tick(self, source: Position, time_ms: int) -> list[Output]:
        """A source partition has reached ``time_ms`` (up to ``source.offset``): every
        pattern's watermark hears of it, as if from an event that none of them wants."""
        now = self.clock.now_ms()
        out: list[Output] = []
        for run in self.runs.values():
            out += run.observe((source.topic, source.partition), time_ms, now)
        return out

    def advance_to(self, watermark_ms: int) -> list[Output]:
        out: list[Output] = []
        for run in self.runs.values():
            out += run.advance_to(watermark_ms) if run.p.time == "event" else run._fire_until(self.clock.now_ms())
        return out

    def snapshot(self) -> dict[str, Any]:
        """Every pattern's state, tagged with its version and body so a changed pattern
        is not restored into."""
        return {
            name: {"version": r.p.version, "source": r.p.source, "state": r.snapshot()} for name, r in self.runs.items()
        }

    def replay_from(self) -> dict[tuple[str, int], int]:
        """Per partition, the oldest offset still waiting in a buffer: a restart that
        restores a snapshot taken now must read again from there."""
        out: dict[tuple[str, int], int] = {}
        for run in self.runs.values():
            for _, _, ev in run.buffer:
                p = ev.position
                if p is not None:
                    key = (p.topic, p.partition)
                    out[key] = min(out.get(key, p.offset), p.offset)
        return out

    def restore(self, snap: Mapping[str, Any], processed: Mapping[tuple[str, int], int] | None = None) -> list[str]:
        """Restore the patterns whose version and body are unchanged; returns their names.
        ``processed``: per partition, the next offset at snapshot time; replayed events
        below it that the watermark had passed are not applied twice."""
        restored = []
        for name, run in self.runs.items():
            saved = snap.get(name)
            if saved and saved["version"] == run.p.version and saved["source"] == run.p.source:
                fresh = PatternRun(run.p)
                fresh.restore(saved["state"], self.clock.now_ms())
                fresh.replay_until = dict(processed or {})
                self.runs[name] = fresh
                restored.append(name)
        return restored

    def replace(self, patterns: Iterable[Pattern]) -> None:
        """Hot reload: an unchanged pattern (same name and version) keeps its state, a
        changed or new one starts fresh, a removed one is dropped."""
        runs = {}
        for p in patterns:
            old = self.runs.get(p.run_id)
            runs[p.run_id] = (
                old if old is not None and old.p.version == p.version and old.p.source == p.source else PatternRun(p)
            )
        self.runs = runs

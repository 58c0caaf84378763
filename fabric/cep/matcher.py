"""The matcher: runs compiled patterns over events in event time and emits composites.

Each pattern keeps its own watermark: the smallest, over the partitions it has seen,
of the newest event time, minus the pattern's allowed lateness. Events wait in a
buffer until the watermark passes them and are then applied in time order, so
out-of-order arrival within the lateness gives the same result as ordered arrival.
An event older than the watermark is late: it is reported (``Late``), never dropped
silently. Timers (an absence's deadline, a window's end, a session's gap) fire when
the watermark passes them. Patterns in processing-time mode use the clock instead.

Offered every event, the matcher keeps one watermark for all patterns (each pattern's
is that minus its lateness) and offers an event only to the patterns whose conditions
can use it (``Candidates``: by type, then by a value its conditions require); a pattern with work due (buffered events, timers) is found
from a heap of due times, so an event costs what the patterns that can use it cost, not
what all of them cost. Fed re-keyed copies for named patterns and ticks (the CEP stage),
each pattern keeps its own watermark over the partitions it hears from.

State is typed records per pattern (``cep/state.py``), bounded by ``max_keys`` (oldest
keys evicted) and purged as the watermark moves past it; the watermark is in
``cep/watermark.py``, the checkpoint codec in ``cep/checkpoint.py``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from prometheus_client import Counter

from fabric.cep.checkpoint import decode_state, encode_state
from fabric.cep.clock import Clock, SystemClock, event_time_ms
from fabric.cep.patterns import Absence, Aggregate, Pattern, Sequence
from fabric.cep.state import Ev, Partial, Pending, Position, RunState, Session, Sliding, Slot, Timer, TimerKind
from fabric.cep.watermark import NEVER, PartitionWatermark
from fabric.conditions import Predicate, compile_predicate, getter, values_required

MAX_CONTRIBUTORS = 50
DUPLICATES = Counter("fabric_cep_duplicates_total", "Events a pattern had already applied (same id), skipped")


@dataclass(slots=True)
class Composite:
    pattern: str
    version: int
    key: str
    events: list[dict[str, Any]]
    first_ms: int
    last_ms: int
    aggregates: dict[str, Any] = field(default_factory=dict)
    confidence: float = 1.0


@dataclass(slots=True)
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


def _wheres(p: Pattern) -> list[Any]:
    spec = p.source
    if "sequence" in spec:
        return [st.get("where") for st in spec["sequence"].get("steps", [])]
    if "absence" in spec:
        return [spec["absence"].get("first"), spec["absence"].get("then_not")]
    return [spec.get("aggregate", {}).get("where")]


def event_types(p: Pattern) -> frozenset[Any] | None:
    """The event types some condition of the pattern can accept, or None when a condition
    does not pin the type down (then every event is a candidate)."""
    found = [values_required(w, "type") for w in _wheres(p)]
    if not found or any(f is None for f in found):
        return None
    return frozenset().union(*(f for f in found if f is not None))


T = TypeVar("T")
#: distinct event types remembered by a ``Candidates``; past that it starts again
TYPES_KEPT = 10_000


def _pins(p: Pattern, etype: Any) -> dict[str, frozenset[Any]] | None:
    """For events of type ``etype``: None when no condition of the pattern can accept one;
    else the values each field must have for some condition to accept it (fields no
    condition pins are left out)."""
    wheres = []
    for w in _wheres(p):
        if isinstance(w, Mapping) and "type" in w:
            if not compile_predicate({"type": w["type"]}, f"pattern {p.name!r}")({"type": etype}):
                continue  # this condition cannot take an event of that type
        wheres.append(w)
    if not wheres:
        return None
    pins: dict[str, frozenset[Any]] = {"tenant": frozenset([p.owner])} if p.owner else {}
    if all(isinstance(w, Mapping) for w in wheres):
        for f in set.intersection(*(set(w) for w in wheres)) - {"type", "tenant"}:
            found = [values_required(w, f) for w in wheres]
            if not f.startswith("$") and all(v is not None for v in found):
                pins[f] = frozenset().union(*(v for v in found if v is not None))
    return pins


@dataclass(slots=True)
class _Plan:
    """Where to look for one event type's candidates."""

    always: list[Any]
    #: (field reader, value -> items): items whose pattern needs the field to have that value
    tables: list[tuple[Callable[[Any], Any], dict[Any, list[Any]]]]


class Candidates(Generic[T]):
    """The items (pattern runs, keyers) an event can matter to, found by an index: its type
    (any operator in the conditions' ``type`` parts, ``$regex`` too), then the values the
    pattern's conditions require of one more field (``data.service: {$in: [...]}``, the
    owner's ``tenant``), worked out per event type on first sight. A candidate is not yet
    a match: its conditions still run."""

    def __init__(self, items: Iterable[tuple[Pattern, T]]) -> None:
        self._items = list(items)
        self._plans: dict[Any, _Plan] = {}

    def __call__(self, event: Mapping[str, Any]) -> list[T]:
        etype = event.get("type")
        try:
            plan = self._plans.get(etype)
        except TypeError:  # an unhashable type: no condition's type part accepts it
            return []
        if plan is None:
            plan = self._plan(etype)
        if not plan.tables:
            return plan.always
        found = list(plan.always)
        for get, table in plan.tables:
            try:
                hit = table.get(get(event))
            except TypeError:  # an unhashable value equals no pinned (scalar) value
                continue
            if hit:
                found += hit
        return found

    def _plan(self, etype: Any) -> _Plan:
        entries = [(item, pins) for p, item in self._items if (pins := _pins(p, etype)) is not None]
        # index each item by the field whose pinned values differ most between items (the
        # one that tells them apart), so an event meets only the items that want its value
        spread: dict[str, set[frozenset[Any]]] = {}
        for _, pins in entries:
            for f, values in pins.items():
                spread.setdefault(f, set()).add(values)
        always: list[T] = []
        tables: dict[str, dict[Any, list[T]]] = {}
        for item, pins in entries:
            if not pins:
                always.append(item)
                continue
            f = max(pins, key=lambda f: (len(spread[f]), f))
            for v in pins[f]:
                tables.setdefault(f, {}).setdefault(v, []).append(item)
        if len(self._plans) >= TYPES_KEPT:
            self._plans.clear()
        plan = self._plans[etype] = _Plan(always, [(getter(f), t) for f, t in tables.items()])
        return plan


def relevance(p: Pattern) -> Predicate:
    """Whether an event can take part in the pattern (some condition of it accepts it). An
    event of a type no condition accepts is turned away before any condition runs."""
    inner = _relevance(p)
    types = event_types(p)
    if types is None:
        return inner
    return lambda ev: ev.get("type") in types and inner(ev)


def _relevance(p: Pattern) -> Predicate:
    rule = p.rule
    if isinstance(rule, Sequence):
        preds = [s.where for s in rule.steps]
        return lambda ev: any(w(ev) for w in preds)
    if isinstance(rule, Absence):
        first, then_not = rule.first, rule.then_not
        return lambda ev: first(ev) or then_not(ev)
    return rule.where


class PatternRun:
    """One pattern's watermark, buffer and state."""

    def __init__(self, pattern: Pattern) -> None:
        self.p = pattern
        self.relevant = relevance(pattern)
        self.replay_until: dict[tuple[str, int], int] = {}
        #: the matcher's watermark, when it keeps one for every pattern
        self.shared: PartitionWatermark | None = None
        self.st = RunState(pattern.max_keys, pattern.lateness_ms)
        self._on_timer: dict[TimerKind, Callable[[Timer], list[Output]]] = {
            TimerKind.EXPIRE: self._expire, TimerKind.ABSENCE: self._absent, TimerKind.WINDOW: self._window_closes,
            TimerKind.SLIDE: self._slide_empties, TimerKind.SESSION: self._session_ends,
        }  # fmt: skip

    @property
    def watermark(self) -> int:
        """Where this pattern's event time stands (with a shared watermark: that one, minus its lateness)."""
        own = self.st.clock.value
        if self.shared is None or self.shared.value == NEVER or self.p.time != "event":
            return own
        return max(own, self.shared.value - self.p.lateness_ms)

    @property
    def buffer(self) -> list[tuple[int, int, Ev]]:
        return self.st.buffer

    @property
    def timers(self) -> list[Timer]:
        return self.st.timers

    # ------------------------------------------------------------------ time

    def offer(self, ev: Ev, now_ms: int) -> list[Output]:
        """Every event moves time; only events some condition of the pattern accepts are kept."""
        relevant = self.relevant(ev.event)
        if self.p.time == "processing":
            out = self._apply(Ev(now_ms, ev.event, ev.position, ev.source)) if relevant else []
            return out + self.fire_until(now_ms)
        watermark = self.st.clock.value
        if ev.time_ms <= watermark and ev.position is not None:
            done = self.replay_until.get((ev.position.topic, ev.position.partition), -1)
            if ev.position.offset < done:
                return []  # replayed after a restore: applied (or reported late) before the checkpoint
        if ev.time_ms < watermark:
            if not relevant:
                return []
            return [Late(self.p.name, ev.event.get("id"), watermark - ev.time_ms, ev.source or ev.position)]
        if relevant:
            heapq.heappush(self.st.buffer, (ev.time_ms, next(self.st.seq), ev))
        at = ev.source or ev.position
        return self.observe((at.topic, at.partition) if at else None, ev.time_ms, now_ms)

    def accept(self, ev: Ev, watermark: int) -> list[Output]:
        """Shared-watermark mode (event time): catch up to ``watermark`` (the matcher's, as it
        was before this event), then judge the event as ``offer`` does and buffer it. The
        matcher moves the watermark past it afterwards (``Matcher._release``)."""
        out = self.advance_to(watermark) if watermark > self.st.clock.value else []
        watermark = self.st.clock.value
        if ev.time_ms <= watermark and ev.position is not None:
            done = self.replay_until.get((ev.position.topic, ev.position.partition), -1)
            if ev.position.offset < done:
                return out
        if not self.relevant(ev.event):
            return out
        if ev.time_ms < watermark:
            out.append(Late(self.p.name, ev.event.get("id"), watermark - ev.time_ms, ev.source or ev.position))
            return out
        heapq.heappush(self.st.buffer, (ev.time_ms, next(self.st.seq), ev))
        return out

    def next_due(self) -> int | None:
        """The event time of the next thing waiting for the watermark (a buffered event or a timer)."""
        b, t = self.st.buffer, self.st.timers
        if b and t:
            return min(b[0][0], t[0].due)
        return b[0][0] if b else (t[0].due if t else None)

    def observe(self, part: tuple[str, int] | None, time_ms: int, now_ms: int) -> list[Output]:
        """A partition has reached ``time_ms``: move the watermark if that moves it."""
        if self.p.time == "processing":
            return self.fire_until(now_ms)
        moved = self.st.clock.heard(part, time_ms, now_ms)
        return self.advance_to(moved) if moved is not None else []

    def quiet(self, now_ms: int) -> list[Output]:
        """No records for a while: a partition gone quiet stops holding the watermark back."""
        if self.p.time == "processing":
            return self.fire_until(now_ms)
        moved = self.st.clock.quiet(now_ms)
        return self.advance_to(moved) if moved is not None else []

    def advance_to(self, watermark: int) -> list[Output]:
        """Move the watermark forward: apply buffered events up to it, then fire due timers."""
        if watermark <= self.st.clock.value:
            return []
        self.st.clock.value = watermark
        buffer = self.st.buffer
        out: list[Output] = []
        while buffer and buffer[0][0] <= watermark:
            _, _, ev = heapq.heappop(buffer)
            out += self.fire_until(ev.time_ms - 1)  # timers due before this event fire first
            out += self._apply(ev)
        return out + self.fire_until(watermark)

    # ----------------------------------------------------------------- rules

    def _apply(self, ev: Ev) -> list[Output]:
        key = self.p.key(ev.event)
        if key is None:
            return []
        event_id = ev.event.get("id")
        if event_id is not None:
            # An event delivered twice (an edge producer's retry writes it again with the
            # same id) takes part once.
            if event_id in self.st.applied:
                DUPLICATES.inc()
                return []
            self.st.applied.put(event_id, None)
        rule = self.p.rule
        if isinstance(rule, Sequence):
            return self._sequence(rule, key, ev)
        if isinstance(rule, Absence):
            return self._absence(rule, key, ev)
        return self._aggregate(rule, key, ev)

    def _sequence(self, rule: Sequence, key: str, ev: Ev) -> list[Output]:
        steps = rule.steps
        partials = self.st.partials
        part = partials.get(key)
        if part is not None and ev.time_ms - part.first_ms > rule.within_ms:
            del partials[key]
            part = None
        if part is None:
            if not steps[0].where(ev.event):
                return []
            part = Partial(0, 1, [ev.slim()], ev.time_ms, {0}, next(self.st.seq))
            partials.put(key, part)
            self._schedule(part.first_ms + rule.within_ms, TimerKind.EXPIRE, key, part.token)
        elif not self._advance(steps, part, ev):
            return []
        last = len(steps) - 1
        if part.step == last and part.count >= steps[last].min:
            del partials[key]
            return [Composite(self.p.name, self.p.version, key, _contributors(part.events), part.first_ms,
                              ev.time_ms, {"steps": len(part.matched)}, round(len(part.matched) / len(steps), 3))]  # fmt: skip
        return []

    @staticmethod
    def _advance(steps: Any, part: Partial, ev: Ev) -> bool:
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
        pending = self.st.pending
        waiting = pending.get(key)
        if waiting is not None and rule.then_not(ev.event) and waiting.first.time_ms <= ev.time_ms <= waiting.deadline:
            del pending[key]
            waiting = None
        if waiting is None and rule.first(ev.event):
            token = next(self.st.seq)
            pending.put(key, Pending(ev.time_ms + rule.within_ms, ev.slim(), token))
            # fires once the watermark is past the deadline: an event at the deadline still counts
            self._schedule(ev.time_ms + rule.within_ms + 1, TimerKind.ABSENCE, key, token)
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
                    slot = self.st.windows.get((key, start))
                    if slot is None:
                        slot = Slot()
                        self.st.windows.put((key, start), slot)
                        self._schedule(start + w.size_ms - 1, TimerKind.WINDOW, (key, start), 0)
                    slot.values.append(value)
                    slot.events.append(ev.slim())
            return []
        if w.kind == "session":
            out: list[Output] = []
            s = self.st.sessions.get(key)
            if s is not None and t - s.last > w.gap_ms:
                out += self._close(rule, key, s.values, s.events, s.start, s.last + w.gap_ms)
                s = None
            if s is None:
                s = Session(t, t)
                self.st.sessions.put(key, s)
            s.last = max(s.last, t)
            s.values.append(value)
            s.events.append(ev.slim())
            self._schedule(s.last + w.gap_ms, TimerKind.SESSION, key, s.last)
            return out
        # sliding: evaluated on every event over (t - size, t]; fires when the condition starts to hold
        win = self.st.sliding.get(key)
        if win is None:
            win = Sliding()
            self.st.sliding.put(key, win)
        win.add(t, float(value) if rule.fn != "count" else 1.0, ev.slim())
        win.evict_until(t - w.size_ms)
        self._schedule(t + w.size_ms, TimerKind.SLIDE, key, t)  # forget the key once its window is empty
        agg = summarize(rule.fn, win.sorted, win.total)
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

    def _schedule(self, due: int, kind: TimerKind, key: Any, token: Any) -> None:
        heapq.heappush(self.st.timers, Timer(due, next(self.st.seq), kind, key, token))

    def fire_until(self, until: int) -> list[Output]:
        """Fire the timers due by ``until``, in time order."""
        timers = self.st.timers
        out: list[Output] = []
        while timers and timers[0].due <= until:
            timer = heapq.heappop(timers)
            out += self._on_timer[timer.kind](timer)
        return out

    def _expire(self, t: Timer) -> list[Output]:
        part = self.st.partials.get(t.key)
        if part is not None and part.token == t.token:
            del self.st.partials[t.key]
        return []

    def _absent(self, t: Timer) -> list[Output]:
        waiting = self.st.pending.get(t.key)
        if waiting is None or waiting.token != t.token:
            return []
        del self.st.pending[t.key]
        first = waiting.first
        return [Composite(self.p.name, self.p.version, t.key, [first.ref()], first.time_ms, waiting.deadline,
                          {"missing_for_ms": waiting.deadline - first.time_ms})]  # fmt: skip

    def _window_closes(self, t: Timer) -> list[Output]:
        slot = self.st.windows.pop(t.key, None)
        rule = self.p.rule
        if slot is None or not isinstance(rule, Aggregate):
            return []
        key, start = t.key
        return self._close(rule, key, slot.values, slot.events, start, start + rule.window.size_ms)

    def _slide_empties(self, t: Timer) -> list[Output]:
        win = self.st.sliding.get(t.key)
        if win is not None and win.events and win.events[-1][0] == t.token:
            del self.st.sliding[t.key]
        return []

    def _session_ends(self, t: Timer) -> list[Output]:
        s = self.st.sessions.get(t.key)
        rule = self.p.rule
        if s is None or s.last != t.token or not isinstance(rule, Aggregate):
            return []
        del self.st.sessions[t.key]
        return self._close(rule, t.key, s.values, s.events, s.start, s.last + rule.window.gap_ms)

    # ------------------------------------------------------------ checkpoint

    def snapshot(self) -> dict[str, Any]:
        """State as plain JSON-able data (see ``restore``), without the events still
        waiting for the watermark: a restart replays those from Kafka."""
        return encode_state(self.st)

    def restore(self, snap: dict[str, Any], now_ms: int) -> None:
        decode_state(snap, self.st, now_ms)

    def state_size(self) -> int:
        return self.st.size()


class Matcher:
    """All active patterns. ``process`` one event, ``advance_to`` a watermark when idle."""

    def __init__(self, patterns: Iterable[Pattern] = (), clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self.runs: dict[str, PatternRun] = {p.run_id: PatternRun(p) for p in patterns}
        #: None until the first event says: True when offered every event (one watermark for
        #: all patterns), False when fed re-keyed copies for named patterns (one each)
        self.shared: bool | None = None
        self.base = PartitionWatermark(0)
        #: (due + lateness, n, run): patterns with something waiting for the watermark
        self._due: list[tuple[int, int, PatternRun]] = []
        self._queued: dict[int, int] = {}  # id(run) -> the smallest due it is queued at
        self._n = 0
        self._index()

    def _index(self) -> None:
        runs = list(self.runs.values())
        self._candidates = Candidates((r.p, r) for r in runs if r.p.time == "event")
        self._processing = [r for r in runs if r.p.time == "processing"]
        self._due.clear()
        self._queued.clear()
        for r in runs:
            r.shared = self.base if self.shared else None
            if self.shared:
                self._queue(r)

    def _queue(self, run: PatternRun) -> None:
        due = run.next_due()
        if due is None or run.p.time != "event":
            return
        # due once the pattern's watermark passes both: it only ever moves forward
        at = max(due, run.st.clock.value + 1) + run.p.lateness_ms
        if at < self._queued.get(id(run), 2**62):
            self._n += 1
            heapq.heappush(self._due, (at, self._n, run))
            self._queued[id(run)] = at

    def _release(self) -> list[Output]:
        """Let every pattern with something due by the shared watermark have it, in turn."""
        out: list[Output] = []
        base, due = self.base.value, self._due
        while due and due[0][0] <= base:
            at, _, run = heapq.heappop(due)
            if self._queued.get(id(run)) != at:
                continue  # queued again, earlier, since
            del self._queued[id(run)]
            out += run.advance_to(base - run.p.lateness_ms)
            self._queue(run)
        return out

    def _mode(self, shared: bool) -> bool:
        if self.shared is None:
            self.shared = shared
            self._index()
        return self.shared

    def process(
        self,
        event: Mapping[str, Any],
        position: Position | None = None,
        time_ms: int | None = None,
        *,
        source: Position | None = None,
        runs: Iterable[str] | None = None,
    ) -> list[Output]:
        """Offer one event to every pattern that can use it, or only to ``runs`` (the
        patterns a re-keyed copy was sent for; the others learn the time from ``tick``)."""
        t = event_time_ms(event) if time_ms is None else time_ms
        now = self.clock.now_ms()
        out: list[Output] = []
        ev = Ev(t, event, position, source)
        if runs is not None and self._mode(False):
            raise ValueError("this matcher is offered every event; it cannot take copies for named patterns")
        if runs is None and self._mode(True):
            before = self.base.value
            at = source or position
            moved = self.base.heard((at.topic, at.partition) if at else None, t, now)
            for run in self._candidates(event):
                out += run.accept(ev, before - run.p.lateness_ms if before != NEVER else NEVER)
                self._queue(run)
            for run in self._processing:
                out += run.offer(ev, now)
            if moved is not None:
                self.base.value = moved
            out += self._release()
            return out
        for run_id in self.runs if runs is None else runs:
            wanted = self.runs.get(run_id)
            if wanted is not None:
                out += wanted.offer(ev, now)
        return out

    def tick(self, source: Position, time_ms: int) -> list[Output]:
        """A source partition has reached ``time_ms`` (up to ``source.offset``): every
        pattern's watermark hears of it, as if from an event that none of them wants."""
        now = self.clock.now_ms()
        part = (source.topic, source.partition)
        if self.shared:
            moved = self.base.heard(part, time_ms, now)
            if moved is not None:
                self.base.value = moved
            out = self._release()
            for run in self._processing:
                out += run.fire_until(now)
            return out
        out = []
        for run in self.runs.values():
            out += run.observe(part, time_ms, now)
        return out

    def quiet(self) -> list[Output]:
        """Called when no records came for a while: partitions that went quiet stop holding
        the watermark back, and what waited for them is released."""
        now = self.clock.now_ms()
        if self.shared:
            moved = self.base.quiet(now)
            if moved is not None:
                self.base.value = moved
            out = self._release()
            for run in self._processing:
                out += run.fire_until(now)
            return out
        out = []
        for run in self.runs.values():
            out += run.quiet(now)
        return out

    def advance_to(self, watermark_ms: int) -> list[Output]:
        out: list[Output] = []
        for run in self.runs.values():
            out += run.advance_to(watermark_ms) if run.p.time == "event" else run.fire_until(self.clock.now_ms())
        if self.shared:
            self._index()
        return out

    def _sync(self) -> None:
        """Shared mode: write the shared watermark into each pattern's own (for a checkpoint).
        Nothing is due by it (``_release`` ran), so moving a pattern's value applies nothing."""
        if not self.shared:
            return
        for run in self.runs.values():
            clock = run.st.clock
            clock.seen = dict(self.base.seen)
            if self.base.value != NEVER and run.p.time == "event":
                clock.value = max(clock.value, self.base.value - run.p.lateness_ms)

    def snapshot(self) -> dict[str, Any]:
        """Every pattern's state, tagged with its version and body so a changed pattern
        is not restored into."""
        self._sync()
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
        # the shared watermark: every pattern heard every partition, so any restored one tells it
        for name in restored:
            run = self.runs[name]
            for part, (t, heard) in run.st.clock.seen.items():
                old = self.base.seen.get(part)
                if old is None or t > old[0]:
                    self.base.seen[part] = (t, heard)
            if run.p.time == "event" and run.st.clock.value != NEVER:
                self.base.value = max(self.base.value, run.st.clock.value + run.p.lateness_ms)
        self._index()
        return restored

    def replace(self, patterns: Iterable[Pattern]) -> None:
        """Hot reload: an unchanged pattern (same name and version) keeps its state, a
        changed or new one starts fresh, a removed one is dropped."""
        self._sync()
        runs = {}
        for p in patterns:
            old = self.runs.get(p.run_id)
            runs[p.run_id] = (
                old if old is not None and old.p.version == p.version and old.p.source == p.source else PatternRun(p)
            )
        self.runs = runs
        self._index()

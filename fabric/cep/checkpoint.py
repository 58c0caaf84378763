"""The checkpoint codec: a pattern's state (``RunState``) to plain JSON-able data and back,
and the checkpoint record the CEP stage writes per partition (``ctx.cep-checkpoints``).

Events still waiting for the watermark are not written: a restart replays them from
Kafka (the record's ``offset`` is where reading starts again), and ``processed`` is
the next offset at checkpoint time, so replayed events the watermark had passed are
not applied twice.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Any

import orjson

from fabric.cep.state import Ev, Partial, Pending, Position, RunState, Session, Sliding, Slot, Timer, TimerKind


def encode_state(st: RunState) -> dict[str, Any]:
    """The state as plain data (see ``decode_state``); takes a sequence number, as a snapshot does."""
    return {
        "seq": next(st.seq),
        "watermark": st.clock.value,
        "seen": [[_part_out(k), t, heard] for k, (t, heard) in st.clock.seen.items()],
        "timers": [[t.due, t.seq, [t.kind.value, _key_out(t.key), t.token]] for t in st.timers],
        "partials": [[k, p.step, p.count, [_ev_out(e) for e in p.events], p.first_ms, sorted(p.matched), p.token]
                     for k, p in st.partials.items()],
        "pending": [[k, w.deadline, _ev_out(w.first), w.token] for k, w in st.pending.items()],
        "windows": [[_key_out(k), s.values, [_ev_out(e) for e in s.events]] for k, s in st.windows.items()],
        "sessions": [[k, s.start, s.last, s.values, [_ev_out(e) for e in s.events]] for k, s in st.sessions.items()],
        "sliding": [[k, w.armed, [[t, v, _ev_out(e)] for t, v, e in w.events]] for k, w in st.sliding.items()],
    }  # fmt: skip


def decode_state(snap: dict[str, Any], st: RunState, now_ms: int) -> None:
    """Fill an empty ``st`` from ``encode_state``'s output."""
    st.seq = itertools.count(int(snap["seq"]))
    st.clock.value = int(snap["watermark"])
    # every partition counts as just heard: one that was quiet before the restart must
    # not be skipped (and its events taken as late) because the restart took a while
    st.clock.seen = {_part_in(k): (t, max(heard, now_ms)) for k, t, heard in snap["seen"]}
    st.timers = [Timer(due, s, TimerKind(kind), _key_in(key), tok) for due, s, (kind, key, tok) in snap["timers"]]
    heapq.heapify(st.timers)
    for k, step, count, evs, first, matched, tok in snap["partials"]:
        st.partials.put(k, Partial(step, count, [_ev_in(e) for e in evs], first, set(matched), tok))
    for k, d, e, tok in snap["pending"]:
        st.pending.put(k, Pending(d, _ev_in(e), tok))
    for k, values, evs in snap["windows"]:
        st.windows.put(_key_in(k), Slot(values, [_ev_in(e) for e in evs]))
    for k, start, last, values, evs in snap["sessions"]:
        st.sessions.put(k, Session(start, last, values, [_ev_in(e) for e in evs]))
    for k, armed, items in snap["sliding"]:
        w = Sliding()
        for t, v, e in items:
            w.add(t, v, _ev_in(e))
        w.armed = armed
        st.sliding.put(k, w)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One partition's checkpoint record."""

    offset: int  # where a restore reads again from
    processed: int  # the next offset at checkpoint time
    matcher: dict[str, Any]  # Matcher.snapshot()

    def encode(self) -> bytes:
        return orjson.dumps({"offset": self.offset, "processed": self.processed, "matcher": self.matcher}, default=str)

    @classmethod
    def decode(cls, raw: bytes) -> Checkpoint:
        doc = orjson.loads(raw)
        return cls(int(doc["offset"]), int(doc["processed"]), doc["matcher"])


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

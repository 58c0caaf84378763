"""A matcher restored from a JSON snapshot continues exactly as if it had never stopped."""

from __future__ import annotations

import random
from typing import Any

import orjson

from fabric.cep.matcher import Composite, Late, Matcher, Output
from fabric.cep.patterns import load_patterns
from fabric.cep.state import Position
from fabric.testing import ManualClock

PATTERNS = """
- {name: seq, key: data.service, allowed_lateness: 1s, sequence: {within: 1m, steps: [
    {where: {type: deploy}}, {where: {type: log, data.level: WARN}, optional: true},
    {where: {type: log, data.level: ERROR}, at_least: 2}]}}
- {name: gone, key: subject, allowed_lateness: 1s, absence: {first: {type: beat}, then_not: {type: beat}, within: 20s}}
- {name: tumble, key: data.service, allowed_lateness: 1s, aggregate: {where: {type: log}, fn: count,
    window: {kind: tumbling, size: 10s}, when: {$gte: 4}}}
- {name: hop, key: data.service, allowed_lateness: 1s, aggregate: {where: {type: metric}, field: data.v, fn: avg,
    window: {kind: hopping, size: 20s, slide: 5s}, when: {$gt: 60}}}
- {name: sess, key: data.service, allowed_lateness: 1s, aggregate: {where: {type: log}, fn: count,
    window: {kind: session, gap: 3s}, when: {$gte: 3}}}
- {name: slide, key: data.service, allowed_lateness: 1s, aggregate: {where: {type: metric}, field: data.v, fn: p95,
    window: {kind: sliding, size: 30s}, when: {$gt: 90}}}
"""


def stream(n: int) -> list[tuple[dict[str, Any], Position]]:
    rnd = random.Random(11)
    t = 0
    out = []
    for i in range(n):
        t += rnd.randint(0, 400)
        svc = f"s{rnd.randrange(5)}"
        kind = rnd.choice(["deploy", "log", "log", "log", "metric", "metric", "beat"])
        data: dict[str, Any] = {
            "service": svc,
            "level": rnd.choice(["INFO", "WARN", "ERROR"]),
            "v": rnd.uniform(0, 100),
        }
        ev = {"id": f"e{i}", "type": kind, "subject": svc if kind != "beat" else f"db{rnd.randrange(3)}",
              "tenant": "t", "time": t + rnd.randint(-800, 0), "data": data}  # fmt: skip
        out.append((ev, Position("ctx.x", i % 3, i)))
    return out


def summary(outputs: list[Output]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for o in outputs:
        if isinstance(o, Composite):
            rows.append(
                ("c", o.pattern, o.key, o.first_ms, o.last_ms, tuple(e["id"] for e in o.events), str(o.aggregates))
            )
        elif isinstance(o, Late):
            rows.append(("late", o.pattern, o.event_id, o.late_by_ms))
    return rows


def test_restored_matcher_continues_exactly() -> None:
    events = stream(3000)
    patterns = load_patterns(PATTERNS)
    whole = Matcher(patterns, clock=ManualClock())
    expected = [o for ev, pos in events for o in whole.process(ev, pos)] + whole.advance_to(10**9)
    assert len([o for o in expected if isinstance(o, Composite)]) > 20  # the stream exercises the patterns

    first = Matcher(patterns, clock=ManualClock())
    got = [o for ev, pos in events[:1700] for o in first.process(ev, pos)]
    snap = orjson.loads(orjson.dumps(first.snapshot()))
    # like the CEP stage: read again from the oldest event still waiting in a buffer
    start = min(first.replay_from().values(), default=1700)
    assert start < 1700  # the stream keeps events waiting for the watermark
    processed = {("ctx.x", p): 1700 for p in range(3)}
    second = Matcher(load_patterns(PATTERNS), clock=ManualClock())
    assert sorted(second.restore(snap, processed)) == ["gone", "hop", "seq", "sess", "slide", "tumble"]
    got += [o for ev, pos in events[start:] for o in second.process(ev, pos)] + second.advance_to(10**9)
    assert summary(got) == summary(expected)


def test_a_changed_pattern_is_not_restored() -> None:
    m = Matcher(load_patterns(PATTERNS), clock=ManualClock())
    for ev, pos in stream(200):
        m.process(ev, pos)
    snap = m.snapshot()
    changed = Matcher(load_patterns(PATTERNS.replace("within: 20s", "within: 25s")), clock=ManualClock())
    assert "gone" not in changed.restore(snap) and "seq" in changed.restore(snap)

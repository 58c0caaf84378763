"""The matcher, per rule and window kind, with exact expected composites."""

from __future__ import annotations

import random

import pytest

from fabric.cep.matcher import Matcher
from fabric.cep.patterns import PatternError, load_patterns
from fabric.cep.state import Position
from fabric.testing import Late, ManualClock, composites, ev, run_patterns

DEPLOY_BURST = """
- name: deploy-then-error-burst
  key: data.service
  allowed_lateness: 2s
  sequence:
    within: 5m
    steps:
      - {name: deploy, where: {type: deploy.finished}}
      - {name: errors, where: {type: log.entry, data.level: ERROR}, at_least: 3}
"""


def ids(c: object) -> list[str]:
    return [e["id"] for e in c.events]  # type: ignore[attr-defined]


def test_sequence_with_at_least_fires_once_per_key() -> None:
    events = [
        ev("deploy.finished", 0, id="d1", service="api"),
        ev("log.entry", 1, id="x1", service="api", level="INFO"),
        ev("log.entry", 2, id="e1", service="api", level="ERROR"),
        ev("deploy.finished", 3, id="d2", service="web"),
        ev("log.entry", 4, id="e2", service="api", level="ERROR"),
        ev("log.entry", 5, id="w1", service="web", level="ERROR"),
        ev("log.entry", 6, id="e3", service="api", level="ERROR"),
        ev("log.entry", 7, id="e4", service="api", level="ERROR"),
    ]
    out = composites(run_patterns(DEPLOY_BURST, events, flush_to_ms=60_000))
    assert [(c.pattern, c.key, ids(c), c.first_ms, c.last_ms) for c in out] == [
        ("deploy-then-error-burst", "t|api", ["d1", "e1", "e2", "e3"], 0, 6000)
    ]
    assert out[0].confidence == 1.0 and out[0].version == 1


def test_sequence_expires_after_within() -> None:
    events = [ev("deploy.finished", 0, service="api")] + [
        ev("log.entry", 300 + i, service="api", level="ERROR") for i in range(3)
    ]
    assert composites(run_patterns(DEPLOY_BURST, events, flush_to_ms=10**7)) == []


def test_exact_times_and_optional_steps() -> None:
    spec = """
- name: login-reset-login
  key: subject
  allowed_lateness: 0s
  sequence:
    within: 1m
    steps:
      - {where: {type: auth.failed}, times: 2}
      - {where: {type: auth.reset}, optional: true}
      - {where: {type: auth.ok}}
"""
    with_reset = [
        ev("auth.failed", 0, id="a"),
        ev("auth.failed", 1, id="b"),
        ev("auth.reset", 2, id="r"),
        ev("auth.ok", 3, id="o"),
    ]
    without = [ev("auth.failed", 10, id="c"), ev("auth.failed", 11, id="d"), ev("auth.ok", 12, id="p")]
    too_few = [ev("auth.failed", 20, id="e"), ev("auth.ok", 21, id="q")]
    out = composites(run_patterns(spec, with_reset + without + too_few, flush_to_ms=10**6))
    assert [(ids(c), c.confidence) for c in out] == [(["a", "b", "r", "o"], 1.0), (["c", "d", "p"], 0.667)]


def test_out_of_order_within_lateness_matches_the_ordered_result() -> None:
    ordered = [ev("deploy.finished", 0, id="d", service="api")] + [
        ev("log.entry", 1 + i * 0.5, id=f"e{i}", service="api", level="ERROR") for i in range(3)
    ]
    shuffled = [ordered[2], ordered[0], ordered[3], ordered[1]]  # all within the 2 s lateness
    a = composites(run_patterns(DEPLOY_BURST, ordered, flush_to_ms=10**6))
    b = composites(run_patterns(DEPLOY_BURST, shuffled, flush_to_ms=10**6))
    assert [ids(c) for c in a] == [ids(c) for c in b] == [["d", "e0", "e1", "e2"]]


def test_late_events_are_reported_with_how_late() -> None:
    out = run_patterns(
        DEPLOY_BURST, [ev("log.entry", 100, id="new", service="a"), ev("deploy.finished", 90, id="old", service="a")]
    )
    late = [o for o in out if isinstance(o, Late)]
    assert [(x.pattern, x.event_id, x.late_by_ms) for x in late] == [("deploy-then-error-burst", "old", 8000)]


def test_per_partition_watermark_waits_for_the_slowest_partition() -> None:
    p0, p1 = Position("ctx.log", 0, 1), Position("ctx.log", 1, 1)
    m = Matcher(load_patterns(DEPLOY_BURST), clock=ManualClock())
    m.process(ev("deploy.finished", 0, id="d", service="api"), p0)
    m.process(ev("heartbeat", 0, service="api"), p1)
    m.process(ev("log.entry", 50, service="api", level="ERROR"), p0)
    # partition 1 is behind: its event at 5 s is not late although partition 0 is at 50 s
    assert not [
        o for o in m.process(ev("log.entry", 5, id="p1", service="api", level="ERROR"), p1) if isinstance(o, Late)
    ]
    assert m.runs["deploy-then-error-burst"].watermark == 3000  # min(50 s, 5 s) - 2 s lateness


HEARTBEAT = """
- name: missing-heartbeat
  key: subject
  allowed_lateness: 0s
  absence:
    first: {type: heartbeat}
    then_not: {type: heartbeat}
    within: 30s
"""


def test_absence_fires_when_the_watermark_passes_the_deadline() -> None:
    m = Matcher(load_patterns(HEARTBEAT), clock=ManualClock())
    assert m.process(ev("heartbeat", 0, subject="db", id="h1")) == []
    assert m.process(ev("heartbeat", 20, subject="db", id="h2")) == []  # resets the deadline to 50 s
    assert m.process(ev("other", 45, subject="x")) == []  # watermark 45 s: not yet
    out = composites(m.process(ev("other", 51, subject="x")))
    assert [(c.key, ids(c), c.aggregates["missing_for_ms"]) for c in out] == [("t|db", ["h2"], 30_000)]
    assert composites(m.advance_to(10**6)) == []  # fired once


def test_absence_cancelled_in_time_never_fires() -> None:
    events = [ev("heartbeat", t, subject="db") for t in range(0, 300, 10)]
    assert composites(run_patterns(HEARTBEAT, events, flush_to_ms=299_000)) == []


def agg(window: str, fn: str = "count", when: str = "{$gte: 3}", field: str = "") -> str:
    f = f"\n    field: {field}" if field else ""
    return f"""
- name: agg
  key: data.service
  allowed_lateness: 0s
  aggregate:
    where: {{type: log.entry}}{f}
    fn: {fn}
    window: {window}
    when: {when}
"""


def test_tumbling_window_count_threshold() -> None:
    events = [ev("log.entry", t, service="api", id=f"e{t}") for t in (0, 1, 2, 10, 11, 21, 22, 23, 24)]
    out = composites(run_patterns(agg("{kind: tumbling, size: 10s}"), events, flush_to_ms=10**6))
    assert [(c.aggregates["window_start_ms"], c.aggregates["count"]) for c in out] == [(0, 3), (20_000, 4)]


def test_hopping_window_overlaps() -> None:
    events = [ev("log.entry", t, service="api") for t in (4, 6, 8)]
    out = composites(run_patterns(agg("{kind: hopping, size: 10s, slide: 5s}"), events, flush_to_ms=10**6))
    assert [(c.aggregates["window_start_ms"], c.aggregates["count"]) for c in out] == [(0, 3)]
    out = composites(
        run_patterns(agg("{kind: hopping, size: 10s, slide: 5s}", when="{$gte: 2}"), events, flush_to_ms=10**6)
    )
    assert [(c.aggregates["window_start_ms"], c.aggregates["count"]) for c in out] == [(0, 3), (5000, 2)]


def test_session_windows_split_on_gaps() -> None:
    events = [ev("log.entry", t, service="api") for t in (0, 2, 4, 20, 21, 40, 41, 42, 43)]
    out = composites(run_patterns(agg("{kind: session, gap: 5s}"), events, flush_to_ms=10**6))
    assert [(c.aggregates["window_start_ms"], c.aggregates["count"], c.aggregates["window_end_ms"]) for c in out] == [
        (0, 3, 9000), (40_000, 4, 48_000)]  # fmt: skip


def test_sliding_p95_fires_on_the_rising_edge() -> None:
    values = [100, 120, 900, 950, 980, 130, 110, 100, 990, 995]
    events = [ev("log.entry", i * 60, service="api", ms=v) for i, v in enumerate(values)]
    spec = agg("{kind: sliding, size: 3m}", fn="p95", field="data.ms", when="{$gt: 800}")
    out = composites(run_patterns(spec, events, flush_to_ms=10**7))
    assert [(c.last_ms, c.aggregates["p95"]) for c in out] == [(120_000, 900.0), (480_000, 990.0)]


@pytest.mark.parametrize(("fn", "expected"), [("sum", 60.0), ("avg", 20.0), ("min", 10.0), ("max", 30.0)])
def test_aggregate_functions(fn: str, expected: float) -> None:
    events = [ev("log.entry", t, service="api", ms=v) for t, v in ((0, 10), (1, 20), (2, 30))]
    out = composites(
        run_patterns(
            agg("{kind: tumbling, size: 10s}", fn=fn, field="data.ms", when="{$gt: 0}"), events, flush_to_ms=10**6
        )
    )
    assert out[0].aggregates[fn] == expected


def test_processing_time_mode_uses_the_clock() -> None:
    spec = HEARTBEAT.replace("allowed_lateness: 0s", "time: processing")
    clock = ManualClock(1_000_000)
    m = Matcher(load_patterns(spec), clock=clock)
    m.process(ev("heartbeat", 0, subject="db"))  # event time ignored
    clock.advance(29_000)
    assert composites(m.advance_to(0)) == []
    clock.advance(2_000)
    assert [c.key for c in composites(m.advance_to(0))] == ["t|db"]


def test_hot_reload_keeps_unchanged_state_and_resets_changed() -> None:
    m = Matcher(load_patterns(DEPLOY_BURST + HEARTBEAT), clock=ManualClock())
    m.process(ev("deploy.finished", 0, service="api"))
    m.process(ev("heartbeat", 0, subject="db"))
    m.process(ev("x", 10, subject="y"))
    kept = m.runs["deploy-then-error-burst"]
    m.replace(
        load_patterns(
            DEPLOY_BURST
            + HEARTBEAT.replace("within: 30s", "within: 40s").replace("key: subject", "key: subject\n  version: 2")
        )
    )
    assert m.runs["deploy-then-error-burst"] is kept and kept.state_size() == 1
    assert m.runs["missing-heartbeat"].state_size() == 0 and m.runs["missing-heartbeat"].p.version == 2
    m.replace(load_patterns(HEARTBEAT))
    assert list(m.runs) == ["missing-heartbeat"]


def test_state_is_bounded_and_purged() -> None:
    spec = DEPLOY_BURST.replace("key: data.service", "key: data.service\n  max_keys: 100")
    m = Matcher(load_patterns(spec), clock=ManualClock())
    for i in range(5000):
        m.process(ev("deploy.finished", 0, service=f"s{i}"))
    assert m.runs["deploy-then-error-burst"].state_size() <= 100
    m.advance_to(10**7)
    assert m.runs["deploy-then-error-burst"].state_size() == 0


def test_many_random_orders_within_lateness_agree() -> None:
    base = [ev("deploy.finished", 0, id="d", service="api")] + [
        ev("log.entry", 0.1 * (i + 1), id=f"e{i}", service="api", level="ERROR") for i in range(3)
    ]
    rnd = random.Random(3)
    for _ in range(20):
        shuffled = base[:]
        rnd.shuffle(shuffled)
        assert [ids(c) for c in composites(run_patterns(DEPLOY_BURST, shuffled, flush_to_ms=10**6))] == [
            ["d", "e0", "e1", "e2"]
        ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("- {name: X!, sequence: {within: 1m, steps: [{where: {}}]}}", "pattern 'X!', name"),
        ("- {name: a, sequence: {within: soon, steps: [{where: {}}]}}", "pattern 'a', sequence.within: not a duration"),
        ("- {name: a, sequence: {within: 1m, steps: []}}", "sequence.steps: needs a non-empty list"),
        ("- {name: a, sequence: {within: 1m, steps: [{where: {}, times: 2, at_least: 3}]}}", "use times or at_least"),
        ("- {name: a, sequence: {within: 1m, steps: [{where: {x: {$in: 3}}}]}}", "sequence.steps[0].where.x.$in"),
        (
            "- {name: a, aggregate: {fn: median, window: {kind: tumbling, size: 1m}, when: {$gt: 1}}}",
            "aggregate.fn: must be one of",
        ),
        ("- {name: a, aggregate: {fn: count, window: {kind: daily}, when: {$gt: 1}}}", "aggregate.window.kind"),
        ("- {name: a, aggregate: {fn: sum, window: {kind: tumbling, size: 1m}, when: {$gt: 1}}}", "aggregate.field"),
        ("- {name: a, absence: {first: {}, within: 1m}, sequence: {}}", "exactly one of"),
        ("- {name: a, absence: {first: {}, within: 1m}, colour: red}", "pattern 'a', colour: unknown field"),
        (
            "- {name: a, absence: {first: {}, within: 1m}}\n- {name: a, absence: {first: {}, within: 1m}}",
            "defined twice",
        ),
    ],
)
def test_pattern_errors_name_pattern_field_and_problem(spec: str, message: str) -> None:
    with pytest.raises(PatternError, match=None) as e:
        load_patterns(spec)
    assert message in str(e.value)


def test_a_quiet_partition_stops_holding_the_watermark_back() -> None:
    clock = ManualClock(0)
    m = Matcher(load_patterns(DEPLOY_BURST), clock=clock)
    m.process(ev("heartbeat", 0, service="x"), Position("ctx.log", 1, 0))
    m.process(ev("deploy.finished", 100, service="api"), Position("ctx.log", 0, 0))
    assert m.runs["deploy-then-error-burst"].watermark == -2000  # partition 1 still counts
    clock.advance(11_000)
    m.process(ev("log.entry", 101, service="api"), Position("ctx.log", 0, 1))
    assert m.runs["deploy-then-error-burst"].watermark == 99_000


def test_silence_after_a_burst_releases_what_waited_for_a_quiet_partition() -> None:
    """No record comes after the burst: asking ``quiet`` (the stage does, every second)
    lets the partition that went quiet stop holding the watermark back."""
    for keyed in (False, True):
        clock = ManualClock(0)
        m = Matcher(load_patterns(agg("{kind: sliding, size: 10m}")), clock=clock)
        runs = ["agg"] if keyed else None
        m.process(ev("log.entry", 0, service="a"), Position("ctx.log", 2, 0), runs=runs)
        out = []
        for i in range(3):
            out += m.process(ev("log.entry", 10 + i, service="b"), Position("ctx.log", 1, i), runs=runs)
        assert composites(out) == [] and composites(m.quiet()) == []  # partition 2 was heard just now
        clock.advance(11_000)
        fired = composites(m.quiet())
        assert [c.key for c in fired] == ["t|b"] and composites(m.quiet()) == []


def test_tenants_never_share_a_match() -> None:
    events = [ev("deploy.finished", 0, service="api", tenant="a")] + [
        ev("log.entry", 1 + i, service="api", level="ERROR", tenant="b") for i in range(3)
    ]
    assert composites(run_patterns(DEPLOY_BURST, events, flush_to_ms=10**6)) == []


def test_a_million_short_lived_keys_leave_no_state() -> None:
    spec = agg("{kind: sliding, size: 1s}") + DEPLOY_BURST + HEARTBEAT.replace("within: 30s", "within: 1s")
    m = Matcher(load_patterns(spec), clock=ManualClock())
    for i in range(20_000):  # each key lives for one event
        m.process(ev("log.entry", i * 0.01, service=f"k{i}", subject=f"k{i}"))
        m.process(ev("deploy.finished", i * 0.01, service=f"k{i}"))
        m.process(ev("heartbeat", i * 0.01, subject=f"k{i}"))
    m.advance_to(10**9)
    assert sum(r.state_size() for r in m.runs.values()) == 0
    assert all(not r.timers and not r.buffer for r in m.runs.values())


def test_an_event_delivered_twice_takes_part_once() -> None:
    """An edge producer's retry can write an event twice (same id, another offset)."""
    e2 = ev("log.entry", 2, id="e2", service="api", level="ERROR")
    events = [
        ev("deploy.finished", 0, id="d1", service="api"),
        ev("log.entry", 1, id="e1", service="api", level="ERROR"),
        e2,
        dict(e2),  # the copy
        ev("log.entry", 3, id="e3", service="api", level="ERROR"),
    ]
    [c] = composites(run_patterns(DEPLOY_BURST, events, flush_to_ms=60_000))
    assert ids(c) == ["d1", "e1", "e2", "e3"]


def test_keyed_copies_and_ticks_give_what_the_events_themselves_give() -> None:
    """Re-keyed: each copy goes only to the patterns it was sent for, the watermark comes
    from the source partitions (ticks), and composites name the source positions."""
    m = Matcher(load_patterns(DEPLOY_BURST), clock=ManualClock())
    name = "deploy-then-error-burst"
    out = []
    for i, (etype, level) in enumerate([("deploy.finished", None), *[("log.entry", "ERROR")] * 3]):
        e = ev(etype, i, id=f"k{i}", service="api", level=level)
        src = Position("ctx.log", i % 2, 100 + i)
        out += m.process(e, Position("ctx.cep-keyed", 0, i), source=src, runs=[name])
    assert not composites(out)  # the watermark waits for both source partitions
    out += m.tick(Position("ctx.log", 0, 200), 60_000)
    out += m.tick(Position("ctx.log", 1, 201), 60_000)
    [c] = composites(out)
    assert ids(c) == ["k0", "k1", "k2", "k3"]
    assert [(e["topic"], e["partition"], e["offset"]) for e in c.events][:2] == [
        ("ctx.log", 0, 100),
        ("ctx.log", 1, 101),
    ]
    # a copy sent for another pattern only does not reach this one
    assert m.process(ev("deploy.finished", 70, id="x", service="web"), runs=["other"]) == []


def _stream(n: int, seed: int) -> list[dict[str, object]]:
    """Mixed events over a few services and partitions, a little out of order (within the lateness)."""
    rnd = random.Random(seed)
    out, t = [], 1_700_000_000_000
    for i in range(n):
        t += rnd.randint(0, 400)
        svc = f"svc-{rnd.randrange(5)}"
        kind = rnd.random()
        if kind < 0.45:
            e = ev("log.entry", 0, service=svc, level=rnd.choice(["ERROR", "INFO"]), table="orders")
        elif kind < 0.75:
            e = ev(
                "metric.sample",
                0,
                service=svc,
                name=rnd.choice(["latency_ms", "heartbeat"]),
                value=rnd.uniform(50, 900),
            )
        elif kind < 0.9:
            e = ev("page.updated", 0, service=svc)
        elif kind < 0.96:
            e = ev("deploy.finished", 0, service=svc)
        else:
            e = ev("schema.altered", 0, service=svc, table="orders", change="altered")
        e.update(id=f"s{i}", subject=svc, time=t + rnd.randint(-1500, 0))
        out.append(e)
    return out


def _outputs(out: list[object]) -> list[tuple[object, ...]]:
    return sorted(
        (o.pattern, o.key, o.first_ms, o.last_ms, tuple(e["id"] for e in o.events)) if hasattr(o, "key")
        else (o.pattern, str(o.event_id), o.late_by_ms)  # type: ignore[attr-defined]
        for o in out
    )  # fmt: skip


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_one_watermark_for_all_patterns_matches_one_each(seed: int) -> None:
    """Offered every event, the matcher keeps one watermark and offers an event only to the
    patterns that can use its type; that gives exactly what a watermark per pattern gives."""
    from pathlib import Path

    library = (Path(__file__).resolve().parents[2] / "fabric" / "schemas" / "patterns" / "library.yaml").read_text()
    events = _stream(4000, seed)
    shared = Matcher(load_patterns(library), clock=ManualClock())
    each = Matcher(load_patterns(library), clock=ManualClock())
    names = list(each.runs)
    got_shared: list[object] = []
    got_each: list[object] = []
    for i, e in enumerate(events):
        at = Position("ctx.log", i % 3, i)
        got_shared += shared.process(e, at)
        got_each += each.process(e, at, runs=names)  # per pattern, every pattern, as before
    assert shared.shared and not each.shared
    got_shared += shared.advance_to(2**60)
    got_each += each.advance_to(2**60)
    assert composites(got_shared), "the stream makes composites"
    assert _outputs(got_shared) == _outputs(got_each)
    assert {n: r.watermark for n, r in shared.runs.items()} == {n: r.watermark for n, r in each.runs.items()}
